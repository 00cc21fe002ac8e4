#include "moebal/core/grace.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "moebal/core/error.h"

namespace moebal::core {
namespace {

// splitmix64: a small, fully specified generator (std distributions are implementation-defined,
// and plans must be identical across compilers).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

// Orthonormalises the D columns of Q (column-major, n rows) in place; returns the norms seen.
double orthonormalise(std::vector<double>& Q, int n, int D, Rng& rng) {
  double norm_sum = 0;
  for (int c = 0; c < D; ++c) {
    double* v = Q.data() + static_cast<size_t>(c) * n;
    for (int attempt = 0; attempt < 3; ++attempt) {
      for (int p = 0; p < c; ++p) {
        const double* q = Q.data() + static_cast<size_t>(p) * n;
        double dot = 0;
        for (int i = 0; i < n; ++i) dot += v[i] * q[i];
        for (int i = 0; i < n; ++i) v[i] -= dot * q[i];
      }
      double nrm = 0;
      for (int i = 0; i < n; ++i) nrm += v[i] * v[i];
      nrm = std::sqrt(nrm);
      if (nrm > 1e-12) {
        if (attempt == 0) norm_sum += nrm;
        for (int i = 0; i < n; ++i) v[i] /= nrm;
        break;
      }
      for (int i = 0; i < n; ++i) v[i] = rng.uniform() - 0.5;  // rank-deficient: restart column
    }
  }
  return norm_sum;
}

// Rows of the top-D eigenvectors of (I + D^-1/2 A D^-1/2) / 2, each row normalised (Ng-Jordan-Weiss).
std::vector<double> spectral_embedding(const std::vector<double>& a, int n, int D, const GraceOptions& opt,
                                       Rng& rng) {
  std::vector<double> dinv(n);
  for (int i = 0; i < n; ++i) {
    double deg = 0;
    for (int j = 0; j < n; ++j) deg += a[static_cast<size_t>(i) * n + j];
    dinv[i] = deg > 0 ? 1.0 / std::sqrt(deg) : 0.0;
  }
  std::vector<double> M(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      M[static_cast<size_t>(i) * n + j] = 0.5 * dinv[i] * a[static_cast<size_t>(i) * n + j] * dinv[j] + (i == j ? 0.5 : 0.0);
  std::vector<double> Q(static_cast<size_t>(n) * D), Z(Q.size());
  for (double& v : Q) v = rng.uniform() - 0.5;
  orthonormalise(Q, n, D, rng);
  double prev = -1;
  for (int it = 0; it < opt.power_iters; ++it) {
    for (int c = 0; c < D; ++c) {
      const double* q = Q.data() + static_cast<size_t>(c) * n;
      double* z = Z.data() + static_cast<size_t>(c) * n;
      for (int i = 0; i < n; ++i) {
        const double* row = M.data() + static_cast<size_t>(i) * n;
        double s = 0;
        for (int j = 0; j < n; ++j) s += row[j] * q[j];
        z[i] = s;
      }
    }
    const double cur = orthonormalise(Z, n, D, rng);
    std::swap(Q, Z);
    if (std::abs(cur - prev) < 1e-12 * D) break;
    prev = cur;
  }
  std::vector<double> X(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i) {
    double nrm = 0;
    for (int c = 0; c < D; ++c) nrm += Q[static_cast<size_t>(c) * n + i] * Q[static_cast<size_t>(c) * n + i];
    nrm = std::sqrt(nrm);
    for (int c = 0; c < D; ++c)
      X[static_cast<size_t>(i) * D + c] = nrm > 0 ? Q[static_cast<size_t>(c) * n + i] / nrm : 0.0;
  }
  return X;
}

// k-means++ seeding + Lloyd; returns the labels of the best of `restarts` runs.
std::vector<int32_t> kmeans(const std::vector<double>& X, int n, int dim, int k, int restarts, Rng& rng) {
  auto dist2 = [&](int i, const double* c) {
    double s = 0;
    for (int d = 0; d < dim; ++d) {
      const double v = X[static_cast<size_t>(i) * dim + d] - c[d];
      s += v * v;
    }
    return s;
  };
  std::vector<int32_t> best(n, 0), label(n);
  double best_inertia = std::numeric_limits<double>::infinity();
  std::vector<double> C(static_cast<size_t>(k) * dim), d2(n);
  for (int run = 0; run < std::max(1, restarts); ++run) {
    const int first = static_cast<int>(rng.next() % static_cast<uint64_t>(n));
    std::copy_n(X.begin() + static_cast<size_t>(first) * dim, dim, C.begin());
    for (int c = 1; c < k; ++c) {
      double total = 0;
      for (int i = 0; i < n; ++i) {
        d2[i] = std::numeric_limits<double>::infinity();
        for (int p = 0; p < c; ++p) d2[i] = std::min(d2[i], dist2(i, C.data() + static_cast<size_t>(p) * dim));
        total += d2[i];
      }
      int pick = n - 1;
      double u = rng.uniform() * total;
      for (int i = 0; i < n; ++i) {
        if (u < d2[i]) {
          pick = i;
          break;
        }
        u -= d2[i];
      }
      std::copy_n(X.begin() + static_cast<size_t>(pick) * dim, dim, C.begin() + static_cast<size_t>(c) * dim);
    }
    double inertia = 0;
    for (int iter = 0; iter < 100; ++iter) {
      bool changed = iter == 0;
      inertia = 0;
      for (int i = 0; i < n; ++i) {
        int arg = 0;
        double bd = std::numeric_limits<double>::infinity();
        for (int c = 0; c < k; ++c) {
          const double v = dist2(i, C.data() + static_cast<size_t>(c) * dim);
          if (v < bd) {
            bd = v;
            arg = c;
          }
        }
        changed |= label[i] != arg;
        label[i] = arg;
        inertia += bd;
      }
      if (!changed) break;
      std::vector<double> sum(C.size(), 0.0);
      std::vector<int> cnt(k, 0);
      for (int i = 0; i < n; ++i) {
        ++cnt[label[i]];
        for (int d = 0; d < dim; ++d) sum[static_cast<size_t>(label[i]) * dim + d] += X[static_cast<size_t>(i) * dim + d];
      }
      for (int c = 0; c < k; ++c)
        if (cnt[c] > 0)
          for (int d = 0; d < dim; ++d) C[static_cast<size_t>(c) * dim + d] = sum[static_cast<size_t>(c) * dim + d] / cnt[c];
    }
    if (inertia < best_inertia) {
      best_inertia = inertia;
      best = label;
    }
  }
  return best;
}

// Algorithm 2's size repair on local indices 0..n-1 with local affinity a [n, n].
void repair_sizes(const std::vector<double>& a, int n, int D, int min_size, int max_size, std::vector<int32_t>& g) {
  auto aff = [&](int i, int grp, int skip) {
    double s = 0;
    for (int j = 0; j < n; ++j)
      if (g[j] == grp && j != skip && j != i) s += a[static_cast<size_t>(i) * n + j];
    return s;
  };
  std::vector<int> size(D, 0);
  for (int i = 0; i < n; ++i) ++size[g[i]];
  // Step 3: peel the members least attached to their oversized group into the overflow set.
  std::vector<int> omega;
  for (int grp = 0; grp < D; ++grp)
    while (size[grp] > max_size) {
      int worst = -1;
      double wa = std::numeric_limits<double>::infinity();
      for (int i = 0; i < n; ++i)
        if (g[i] == grp) {
          const double v = aff(i, grp, -1);
          if (v <= wa) {  // ties: the highest index leaves
            wa = v;
            worst = i;
          }
        }
      g[worst] = -1;
      --size[grp];
      omega.push_back(worst);
    }
  // Step 4: re-home the overflow, strongest-connected first, to the group with room it likes most.
  std::vector<double> degree(n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) degree[i] += a[static_cast<size_t>(i) * n + j];
  std::sort(omega.begin(), omega.end(), [&](int x, int y) { return degree[x] != degree[y] ? degree[x] > degree[y] : x < y; });
  for (int i : omega) {
    int best = -1;
    double ba = -1;
    for (int grp = 0; grp < D; ++grp) {
      if (size[grp] >= max_size) continue;
      const double v = aff(i, grp, -1);
      if (best < 0 || v > ba || (v == ba && size[grp] < size[best])) {
        best = grp;
        ba = v;
      }
    }
    g[i] = best;
    ++size[best];
  }
  // Step 5: fill undersized groups with the members whose move costs the least affinity (the
  // digest says "weakest-affinity experts from oversized groups"; after step 4 no group is
  // oversized, so any group above min_size donates).
  for (int grp = 0; grp < D; ++grp)
    while (size[grp] < min_size) {
      int pick = -1;
      double pg = -std::numeric_limits<double>::infinity();
      for (int i = 0; i < n; ++i) {
        if (g[i] == grp || size[g[i]] <= min_size) continue;
        const double gain = aff(i, grp, -1) - aff(i, g[i], -1);
        if (gain > pg) {
          pg = gain;
          pick = i;
        }
      }
      MOEBAL_CHECK(pick >= 0, "grace: no donor for an undersized group");
      --size[g[pick]];
      g[pick] = grp;
      ++size[grp];
    }
}

// Local search after the repair (our additions; the paper stops at Algorithm 2).
//  1. Balance (only with loads w and balance_tol >= 0): while the heaviest group exceeds
//     (1 + balance_tol) x the mean group load, take the move or swap out of it that lowers it
//     without lifting the other group to its level and that loses the least co-activation.
//  2. Affinity: single moves within [min_size, max_size] and pairwise swaps, each taken when it
//     raises the intra-group co-activation and keeps every group's load at or below the heaviest
//     group's load before this phase, best move per member in index order, until a pass finds
//     none or max_passes is reached. So it never worsens the grouping's load imbalance.
void refine_groups(const std::vector<double>& a, const std::vector<double>& w, int n, int D, int min_size,
                   int max_size, int max_passes, double balance_tol, std::vector<int32_t>& g) {
  if (D <= 1 || n <= 1) return;
  std::vector<double> load(D, 0.0);
  for (int i = 0; i < n; ++i) load[g[i]] += w.empty() ? 0.0 : w[i];
  auto wt = [&](int i) { return w.empty() ? 0.0 : w[i]; };
  std::vector<double> M(static_cast<size_t>(n) * D, 0.0);  // M[i][k] = affinity of i to group k
  double total = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      M[static_cast<size_t>(i) * D + g[j]] += a[static_cast<size_t>(i) * n + j];
      total += a[static_cast<size_t>(i) * n + j];
    }
  const double eps = 1e-12 * total;
  std::vector<int> size(D, 0);
  for (int i = 0; i < n; ++i) ++size[g[i]];
  auto move = [&](int i, int to) {
    const int from = g[i];
    for (int x = 0; x < n; ++x) {
      const double v = a[static_cast<size_t>(x) * n + i];
      M[static_cast<size_t>(x) * D + from] -= v;
      M[static_cast<size_t>(x) * D + to] += v;
    }
    --size[from];
    ++size[to];
    load[from] -= wt(i);
    load[to] += wt(i);
    g[i] = to;
  };
  if (balance_tol >= 0 && !w.empty()) {
    const double target = (1.0 + balance_tol) * std::accumulate(load.begin(), load.end(), 0.0) / D;
    for (int iter = 0; iter < n * D; ++iter) {
      const int h = static_cast<int>(std::max_element(load.begin(), load.end()) - load.begin());
      if (load[h] <= target) break;
      int bi = -1, bj = -1, bk = -1;
      double bd = -std::numeric_limits<double>::infinity(), bpeak = 0;
      auto consider = [&](double delta, double peak, int i, int j, int k) {
        if (delta > bd + eps || (delta >= bd - eps && peak < bpeak)) {
          bd = delta;
          bpeak = peak;
          bi = i;
          bj = j;
          bk = k;
        }
      };
      for (int i = 0; i < n; ++i) {
        if (g[i] != h || wt(i) <= 0) continue;
        const double* Mi = M.data() + static_cast<size_t>(i) * D;
        for (int k = 0; k < D; ++k)
          if (k != h && size[h] > min_size && size[k] < max_size && load[k] + wt(i) < load[h])
            consider(Mi[k] - Mi[h], std::max(load[h] - wt(i), load[k] + wt(i)), i, -1, k);
        for (int j = 0; j < n; ++j) {
          const int k = g[j];
          if (k == h || wt(j) >= wt(i) || load[k] - wt(j) + wt(i) >= load[h]) continue;
          const double aij = a[static_cast<size_t>(i) * n + j];
          const double* Mj = M.data() + static_cast<size_t>(j) * D;
          consider((Mi[k] - aij) - Mi[h] + (Mj[h] - aij) - Mj[k],
                   std::max(load[h] - wt(i) + wt(j), load[k] - wt(j) + wt(i)), i, j, k);
        }
      }
      if (bi < 0) break;
      move(bi, bk);
      if (bj >= 0) move(bj, h);
    }
  }
  if (max_passes <= 0 || total <= 0) return;
  const double cap = *std::max_element(load.begin(), load.end());
  for (int pass = 0; pass < max_passes; ++pass) {
    bool improved = false;
    for (int i = 0; i < n; ++i) {
      const int gi = g[i];
      const double* Mi = M.data() + static_cast<size_t>(i) * D;
      int best_k = -1, best_j = -1;
      double best = eps;
      if (size[gi] > min_size)
        for (int k = 0; k < D; ++k)
          if (k != gi && size[k] < max_size && load[k] + wt(i) <= cap && Mi[k] - Mi[gi] > best) {
            best = Mi[k] - Mi[gi];
            best_k = k;
          }
      for (int j = 0; j < n; ++j) {
        const int gj = g[j];
        if (gj == gi) continue;
        const double aij = a[static_cast<size_t>(i) * n + j];
        const double* Mj = M.data() + static_cast<size_t>(j) * D;
        const double gain = (Mi[gj] - aij) - Mi[gi] + (Mj[gi] - aij) - Mj[gj];
        if (gain > best && load[gi] - wt(i) + wt(j) <= cap && load[gj] - wt(j) + wt(i) <= cap) {
          best = gain;
          best_k = -1;
          best_j = j;
        }
      }
      if (best_j >= 0) {
        const int gj = g[best_j];
        move(i, gj);
        move(best_j, gi);
        improved = true;
      } else if (best_k >= 0) {
        move(i, best_k);
        improved = true;
      }
    }
    if (!improved) break;
  }
}

}  // namespace

void GraceOptions::validate() const {
  MOEBAL_CHECK_ARG(std::isfinite(r) && r >= 0 && r <= 1, "grace: r must be in [0, 1], got ", r);
  MOEBAL_CHECK_ARG(power_iters >= 1, "grace: power_iters must be >= 1, got ", power_iters);
  MOEBAL_CHECK_ARG(kmeans_restarts >= 1, "grace: kmeans_restarts must be >= 1, got ", kmeans_restarts);
  MOEBAL_CHECK_ARG(refine_passes >= 0, "grace: refine_passes must be >= 0, got ", refine_passes);
  MOEBAL_CHECK_ARG(std::isfinite(balance_tol), "grace: balance_tol must be finite (< 0 = off), got ", balance_tol);
}

std::vector<int32_t> constrained_spectral_groups(const double* coact, int32_t E, const std::vector<int32_t>& members,
                                                 int32_t D, int32_t min_size, int32_t max_size,
                                                 const GraceOptions& opt, const double* loads) {
  opt.validate();
  const int n = static_cast<int>(members.size());
  MOEBAL_CHECK_ARG(D >= 1, "grace: num_groups must be >= 1, got ", D);
  MOEBAL_CHECK_ARG(min_size >= 0 && min_size <= max_size, "grace: bad size range [", min_size, ", ", max_size, "]");
  MOEBAL_CHECK_ARG(static_cast<int64_t>(D) * min_size <= n && static_cast<int64_t>(D) * max_size >= n,
                   "grace: ", n, " experts cannot form ", D, " groups of sizes [", min_size, ", ", max_size, "]");
  for (int32_t m : members) MOEBAL_CHECK_ARG(m >= 0 && m < E, "grace: member ", m, " outside [0, ", E, ")");
  std::vector<int32_t> g(n, 0);
  if (n == 0 || D == 1) return g;
  std::vector<double> a(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double v = i == j ? 0.0 : coact[static_cast<size_t>(members[i]) * E + members[j]];
      MOEBAL_CHECK_ARG(std::isfinite(v) && v >= 0, "grace: co-activation [", members[i], ", ", members[j],
                       "] must be finite and >= 0, got ", v);
      a[static_cast<size_t>(i) * n + j] = v;
    }
  Rng rng{opt.seed ^ (static_cast<uint64_t>(n) << 32) ^ static_cast<uint64_t>(D)};
  if (n <= D) {
    std::iota(g.begin(), g.end(), 0);
  } else {
    const std::vector<double> X = spectral_embedding(a, n, D, opt, rng);
    g = kmeans(X, n, D, D, opt.kmeans_restarts, rng);
  }
  repair_sizes(a, n, D, min_size, max_size, g);
  std::vector<double> w;
  if (loads != nullptr) {
    w.resize(n);
    for (int i = 0; i < n; ++i) {
      w[i] = loads[members[i]];
      MOEBAL_CHECK_ARG(std::isfinite(w[i]) && w[i] >= 0, "grace: load of expert ", members[i],
                       " must be finite and >= 0, got ", w[i]);
    }
  }
  refine_groups(a, w, n, D, min_size, max_size, opt.refine_passes, opt.balance_tol, g);
  return g;
}

std::vector<int32_t> grace_grouping(const double* coact, int32_t E, int32_t G, int32_t N, int32_t spg,
                                    const GraceOptions& opt, const double* loads) {
  check_layout(E, spg * G, G, N);
  const int32_t gpn = G / N, spn = spg * gpn;
  std::vector<int32_t> all(E);
  std::iota(all.begin(), all.end(), 0);
  // Node level: fully non-uniform (any size up to the node's slots).
  const std::vector<int32_t> node =
      constrained_spectral_groups(coact, E, all, N, E >= N ? 1 : 0, spn, opt, loads);
  std::vector<int32_t> gpu(E, -1);
  for (int32_t nd = 0; nd < N; ++nd) {
    std::vector<int32_t> mem;
    for (int32_t e = 0; e < E; ++e)
      if (node[e] == nd) mem.push_back(e);
    const int32_t n = static_cast<int32_t>(mem.size());
    const int32_t base = n / gpn;
    const int32_t delta = std::max<int32_t>(1, static_cast<int32_t>(std::lround(base * opt.r)));
    const int32_t lo = base == 0 ? 0 : std::max(1, base - delta);
    const int32_t hi = std::min(base + delta, spg);
    const std::vector<int32_t> sub = constrained_spectral_groups(coact, E, mem, gpn, lo, hi, opt, loads);
    for (int32_t i = 0; i < n; ++i) gpu[mem[i]] = nd * gpn + sub[i];
  }
  return gpu;
}

double intra_group_affinity(const double* coact, int32_t E, const int32_t* group_of) {
  double in = 0, total = 0;
  for (int32_t i = 0; i < E; ++i)
    for (int32_t j = i + 1; j < E; ++j) {
      const double v = coact[static_cast<size_t>(i) * E + j];
      total += v;
      if (group_of[i] == group_of[j]) in += v;
    }
  return total > 0 ? in / total : 1.0;
}

KneeResult grace_knee_r(const std::vector<double>& coact, int32_t L, int32_t E, int32_t G, int32_t N, int32_t spg,
                        const std::vector<double>& candidates, const GraceOptions& opt) {
  MOEBAL_CHECK_ARG(L > 0, "grace knee: num_layers must be > 0, got ", L);
  check_layout(E, spg * G, G, N);
  MOEBAL_CHECK_ARG(coact.size() == static_cast<size_t>(L) * E * E, "grace knee: co-activation must be [", L, ", ",
                   E, ", ", E, "], got ", coact.size(), " values");
  MOEBAL_CHECK_ARG(!candidates.empty(), "grace knee: needs at least one candidate r");
  KneeResult k;
  k.candidates = candidates;
  for (double r : candidates) {
    GraceOptions o = opt;
    o.r = r;
    o.validate();
    double u = 0, sdev = 0;
    for (int32_t l = 0; l < L; ++l) {
      const double* A = coact.data() + static_cast<size_t>(l) * E * E;
      const std::vector<int32_t> gpu = grace_grouping(A, E, G, N, spg, o);
      u += intra_group_affinity(A, E, gpu.data());
      std::vector<int32_t> n(G, 0);
      for (int32_t g : gpu) ++n[g];
      double ss = 0;
      for (int32_t c : n) ss += (c - static_cast<double>(E) / G) * (c - static_cast<double>(E) / G);
      sdev += std::sqrt(ss / G);
    }
    k.u.push_back(u / L);
    k.s.push_back(sdev / L);
  }
  // Knee: farthest point from the chord, on axes scaled to [0, 1].
  auto range = [](const std::vector<double>& v) {
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return std::pair<double, double>{*lo, *hi - *lo > 0 ? *hi - *lo : 1.0};
  };
  const auto [s0, sr] = range(k.s);
  const auto [u0, ur] = range(k.u);
  const size_t m = candidates.size();
  const double x0 = (k.s[0] - s0) / sr, y0 = (k.u[0] - u0) / ur;
  const double x1 = (k.s[m - 1] - s0) / sr, y1 = (k.u[m - 1] - u0) / ur;
  const double len = std::hypot(x1 - x0, y1 - y0);
  double best = -1;
  k.r = candidates[0];
  for (size_t i = 0; i < m; ++i) {
    const double x = (k.s[i] - s0) / sr, y = (k.u[i] - u0) / ur;
    const double d = len > 0 ? std::abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0) / len : 0.0;
    if (d > best + 1e-12) {
      best = d;
      k.r = candidates[i];
    }
  }
  return k;
}

Placement grace_plan(const LoadMatrix& loads, const std::vector<double>& coact, int32_t S, int32_t G, int32_t N,
                     const GraceOptions& opt) {
  loads.validate();
  opt.validate();
  const int32_t L = loads.num_layers, E = loads.num_experts;
  check_layout(E, S, G, N);
  MOEBAL_CHECK_ARG(coact.size() == static_cast<size_t>(L) * E * E, "grace: co-activation must be [", L, ", ", E,
                   ", ", E, "], got ", coact.size(), " values");
  const int32_t spg = S / G;
  std::vector<int32_t> phy2log;
  phy2log.reserve(static_cast<size_t>(L) * S);
  for (int32_t l = 0; l < L; ++l) {
    const double* A = coact.data() + static_cast<size_t>(l) * E * E;
    const double* w = loads.row(l);
    const std::vector<int32_t> primary = grace_grouping(A, E, G, N, spg, opt, w);
    std::vector<std::vector<int32_t>> held(G);
    for (int32_t e = 0; e < E; ++e) held[primary[e]].push_back(e);
    std::vector<int32_t> cnt(E, 1);
    int32_t free_slots = S - E;
    auto gpu_load = [&](int32_t g) {
      double s = 0;
      for (int32_t e : held[g]) s += w[e] / cnt[e];
      return s;
    };
    auto holds = [&](int32_t g, int32_t e) { return std::find(held[g].begin(), held[g].end(), e) != held[g].end(); };
    // Replication by skew, repeated on the updated loads while it relieves the heaviest GPU.
    while (free_slots > 0 && G > 1) {
      std::vector<double> gl(G);
      double total = 0;
      int32_t gmax = 0;
      for (int32_t g = 0; g < G; ++g) {
        gl[g] = gpu_load(g);
        total += gl[g];
        if (gl[g] > gl[gmax]) gmax = g;
      }
      if (total <= 0) break;
      const double wmax = gl[gmax], rho = wmax / (total / G);
      const int32_t nrep = std::min<int32_t>(std::max<int32_t>(1, static_cast<int32_t>(std::floor(rho))), G - 1);
      std::vector<int32_t> hot(held[gmax]);
      std::sort(hot.begin(), hot.end());
      hot.erase(std::unique(hot.begin(), hot.end()), hot.end());
      std::sort(hot.begin(), hot.end(), [&](int32_t x, int32_t y) {
        const double lx = w[x] / cnt[x], ly = w[y] / cnt[y];
        return lx != ly ? lx > ly : x < y;
      });
      const double threshold = wmax * nrep / (nrep + 1.0);
      double cum = 0;
      size_t num_hot = 0;
      while (num_hot < hot.size() && (num_hot == 0 || cum < threshold)) {
        cum += w[hot[num_hot]] / cnt[hot[num_hot]];
        ++num_hot;
      }
      bool placed = false;
      for (size_t h = 0; h < num_hot && free_slots > 0; ++h) {
        const int32_t e = hot[h];
        std::vector<int32_t> targets;
        for (int32_t g = 0; g < G; ++g)
          if (static_cast<int32_t>(held[g].size()) < spg && !holds(g, e)) targets.push_back(g);
        std::sort(targets.begin(), targets.end(), [&](int32_t x, int32_t y) { return gl[x] != gl[y] ? gl[x] < gl[y] : x < y; });
        int32_t added = 0;
        for (int32_t g : targets) {
          if (added == nrep || free_slots == 0) break;
          // Guard (ours): a copy must not make its new GPU the heaviest.
          if (gl[g] + w[e] / (cnt[e] + 1) >= wmax) break;
          held[g].push_back(e);
          ++cnt[e];
          --free_slots;
          ++added;
          placed = true;
        }
        for (int32_t g = 0; g < G; ++g) gl[g] = gpu_load(g);
      }
      if (!placed) break;
    }
    // Slots still free (ours): the least-loaded GPU with a free slot takes a copy of the expert with
    // the highest load per copy that it does not hold and that does not make it the heaviest GPU;
    // if every candidate would, the one adding the least load (an expert it holds, as a last resort).
    while (true) {
      int32_t g = -1;
      double gmax_load = 0;
      std::vector<double> gl(G);
      for (int32_t x = 0; x < G; ++x) {
        gl[x] = gpu_load(x);
        gmax_load = std::max(gmax_load, gl[x]);
        if (static_cast<int32_t>(held[x].size()) < spg && (g < 0 || gl[x] < gl[g])) g = x;
      }
      if (g < 0) break;
      int32_t pick = -1, least = -1;
      for (int pass = 0; pass < 2 && pick < 0 && least < 0; ++pass)
        for (int32_t e = 0; e < E; ++e) {
          if (pass == 0 && holds(g, e)) continue;
          const double add = w[e] / (cnt[e] + 1);
          if (gl[g] + add <= gmax_load && (pick < 0 || w[e] / cnt[e] > w[pick] / cnt[pick])) pick = e;
          if (least < 0 || add < w[least] / (cnt[least] + 1)) least = e;
        }
      if (pick < 0) pick = least;
      held[g].push_back(pick);
      ++cnt[pick];
    }
    for (int32_t g = 0; g < G; ++g) {
      MOEBAL_CHECK(static_cast<int32_t>(held[g].size()) == spg, "grace: GPU ", g, " holds ", held[g].size(),
                   " experts, expected ", spg);
      phy2log.insert(phy2log.end(), held[g].begin(), held[g].end());
    }
  }
  return Placement::from_phy2log(L, E, S, G, N, std::move(phy2log));
}

Placement grace_plan(const LoadMatrix& loads, const RoutingTrace& trace, int32_t S, int32_t G, int32_t N,
                     const GraceOptions& opt) {
  MOEBAL_CHECK_ARG(trace.num_layers == loads.num_layers && trace.num_experts == loads.num_experts,
                   "grace: trace has ", trace.num_layers, " layers x ", trace.num_experts,
                   " experts but loads have ", loads.num_layers, " x ", loads.num_experts);
  const size_t EE = static_cast<size_t>(loads.num_experts) * loads.num_experts;
  std::vector<double> coact(loads.num_layers * EE);
  for (int32_t l = 0; l < loads.num_layers; ++l) {
    const std::vector<double> c = trace.coactivation(l);
    std::copy(c.begin(), c.end(), coact.begin() + l * EE);
  }
  return grace_plan(loads, coact, S, G, N, opt);
}

}  // namespace moebal::core
