// `balanced` and `vibe` placement policies and the policy registry. Both solve one "domain" at a
// time (all experts on all GPUs, or one node's groups on the node's GPUs when the group -> node
// constraint applies) with the same machinery; vibe only swaps the cost of a copy (tokens) for the
// GPU's predicted time.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <queue>

#include "moebal/core/error.h"
#include "moebal/core/plan_metrics.h"
#include "moebal/core/solvers.h"
#include "solver_detail.h"

namespace moebal::core {
namespace detail {

void greedy_counts(const double* w, int32_t n, int32_t budget, int32_t cap, int32_t* cnt) {
  if (cap <= 0 || static_cast<int64_t>(cap) * n < budget) cap = std::numeric_limits<int32_t>::max();
  for (int32_t i = 0; i < n; ++i) cnt[i] = 1;
  if (budget <= n || cap <= 1) return;
  // Only the R + 1 experts first in (load desc, index asc) order can receive any of the R extra
  // copies: before each step at most R - 1 copies were handed out, so at least two of those R + 1
  // still have one copy and rank ahead of any expert outside them.
  const int32_t extra = budget - n, m = std::min(n, extra + 1);
  thread_local std::vector<int32_t> top;
  top.clear();
  auto ahead = [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  for (int32_t i = 0; i < n; ++i) {
    if (static_cast<int32_t>(top.size()) == m && !ahead(i, top.back())) continue;
    auto pos = std::upper_bound(top.begin(), top.end(), i, ahead);
    top.insert(pos, i);
    if (static_cast<int32_t>(top.size()) > m) top.pop_back();
  }
  // Next copy to the largest load per copy (ties: lower index) among those below the cap.
  auto better = [&](int32_t a, int32_t b) {  // a's next copy goes before b's: w/cnt compared
    const double ra = w[a] * cnt[b], rb = w[b] * cnt[a];  // without dividing (counts are > 0)
    return ra > rb || (ra == rb && a < b);
  };
  if (m <= 16) {
    for (int32_t r = 0; r < extra; ++r) {
      int32_t best = -1;
      for (int32_t i : top)
        if (cnt[i] < cap && (best < 0 || better(i, best))) best = i;
      ++cnt[best];
    }
    return;
  }
  auto less = [&](int32_t a, int32_t b) { return better(b, a); };
  std::make_heap(top.begin(), top.end(), less);
  for (int32_t r = 0; r < extra; ++r) {
    std::pop_heap(top.begin(), top.end(), less);
    const int32_t i = top.back();
    ++cnt[i];
    if (cnt[i] < cap)
      std::push_heap(top.begin(), top.end(), less);
    else
      top.pop_back();
  }
}

namespace {

// Mutable packing with per-GPU costs and per-GPU expert multiplicities.
struct Packer {
  const double* w;
  int32_t n, P, k;
  const CostModel& cost;
  std::vector<int32_t> ex;     // [P*k] local expert per slot
  std::vector<int32_t> cnt;    // [n]
  std::vector<double> per;     // [n] load per copy
  std::vector<double> load;    // [P] cost sum
  std::vector<uint16_t> has;   // [P*n] copies of e on g
  std::vector<double> tab;     // [P*n] cost of one copy of e on g (counts are fixed while searching)
  std::vector<double> tab_per; // [n] load per copy each column of tab was computed for (NaN: none)

  Packer(const double* w_, int32_t n_, int32_t P_, int32_t k_, const CostModel& c)
      : w(w_), n(n_), P(P_), k(k_), cost(c), ex(static_cast<size_t>(P_) * k_), cnt(n_),
        per(n_), load(P_), has(static_cast<size_t>(P_) * n_),
        tab(c.models ? static_cast<size_t>(P_) * n_ : 0),
        tab_per(c.models ? n_ : 0, std::numeric_limits<double>::quiet_NaN()) {}

  // With per-GPU models the cost of a copy depends on the GPU: tabulate it once per count vector.
  // With the identity cost (tokens) it is per[e] and no table is kept.
  // Only columns whose load per copy changed are recomputed (re-packs try count vectors that differ
  // in a few experts).
  void fill_table() {
    if (!cost.models) return;
    for (int32_t e = 0; e < n; ++e) {
      if (per[e] == tab_per[e]) continue;
      for (int32_t g = 0; g < P; ++g) tab[static_cast<size_t>(g) * n + e] = cost(g, per[e]);
      tab_per[e] = per[e];
    }
  }
  double c(int32_t g, int32_t e) const {
    return cost.models ? tab[static_cast<size_t>(g) * n + e] : per[e];
  }

  void rebuild() {
    std::fill(cnt.begin(), cnt.end(), 0);
    std::fill(has.begin(), has.end(), 0);
    for (int32_t s = 0; s < P * k; ++s) ++cnt[ex[s]];
    for (int32_t e = 0; e < n; ++e) per[e] = cnt[e] ? w[e] / cnt[e] : 0.0;
    fill_table();
    for (int32_t g = 0; g < P; ++g) {
      double sum = 0;
      for (int32_t j = 0; j < k; ++j) {
        const int32_t e = ex[g * k + j];
        sum += c(g, e);
        ++has[static_cast<size_t>(g) * n + e];
      }
      load[g] = sum;
    }
  }
  double max_load() const { return *std::max_element(load.begin(), load.end()); }

  // Pairwise swaps between the busiest GPU and another: other GPUs are visited from the least
  // loaded up, and the best swap with the first GPU that admits an improving one is applied
  // (first-improvement over GPUs, best-improvement within a GPU pair). Stops at `floor` (a lower
  // bound for these counts), when no swap lowers the busiest GPU, or after max_iters swaps.
  void search(int32_t max_iters, double floor) {
    if (!cost.models) {
      // Identity cost: view per[] as a table whose rows are all the same (row stride 0).
      search_impl(max_iters, floor, per.data(), 0);
    } else {
      search_impl(max_iters, floor, tab.data(), static_cast<size_t>(n));
    }
  }

  void search_impl(int32_t max_iters, double floor, const double* T, size_t stride) {
    std::vector<int32_t> order(P);
    for (int32_t it = 0; it < max_iters; ++it) {
      const int32_t gm = static_cast<int32_t>(std::max_element(load.begin(), load.end()) - load.begin());
      const double cur = load[gm];
      if (cur <= floor * (1 + 1e-12)) return;
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
        return load[x] < load[y] || (load[x] == load[y] && x < y);
      });
      const double tol = 1e-12 * std::max(1.0, std::abs(cur));
      const uint16_t* has_gm = has.data() + static_cast<size_t>(gm) * n;
      const double* Tg = T + gm * stride;
      int32_t bi = -1, bj = -1;
      double bg = 0, bh = 0;
      for (int32_t h : order) {
        if (h == gm || load[h] >= cur - tol) continue;
        const size_t hn = static_cast<size_t>(h) * n;
        const double* Th = T + h * stride;
        double best = cur - tol;
        for (int32_t a = 0; a < k; ++a) {
          const int32_t si = gm * k + a, ea = ex[si];
          if (has[hn + ea]) continue;  // would duplicate ea on h
          const double ca_h = Th[ea];
          if (ca_h >= best) continue;  // h's new load is at least ca_h
          const double base_g = cur - Tg[ea], base_h = load[h] + ca_h;
          for (int32_t b = 0; b < k; ++b) {
            const int32_t eb = ex[h * k + b];
            if (eb == ea || has_gm[eb]) continue;
            const double ng = base_g + Tg[eb];
            const double nh = base_h - Th[eb];
            const double m = ng > nh ? ng : nh;
            if (m < best) {
              best = m;
              bi = si;
              bj = h * k + b;
              bg = ng;
              bh = nh;
            }
          }
        }
        if (bi >= 0) break;
      }
      if (bi < 0) return;
      const int32_t h = bj / k, ea = ex[bi], eb = ex[bj];
      --has[static_cast<size_t>(gm) * n + ea];
      ++has[static_cast<size_t>(gm) * n + eb];
      --has[static_cast<size_t>(h) * n + eb];
      ++has[static_cast<size_t>(h) * n + ea];
      std::swap(ex[bi], ex[bj]);
      load[gm] = bg;
      load[h] = bh;
    }
  }

  // Removes duplicate copies of an expert on one GPU where a swap with another GPU can do it without
  // raising the busiest GPU: two copies on one GPU are one copy's work with twice the memory.
  void dedupe() {
    const double mx = max_load() * (1 + 1e-12);
    for (int32_t g = 0; g < P; ++g)
      for (int32_t j = 0; j < k; ++j) {
        const int32_t e = ex[g * k + j];
        if (has[static_cast<size_t>(g) * n + e] < 2) continue;
        bool done = false;
        for (int32_t h = 0; h < P && !done; ++h) {
          if (h == g || has[static_cast<size_t>(h) * n + e]) continue;
          for (int32_t b = 0; b < k && !done; ++b) {
            const int32_t f = ex[h * k + b];
            if (has[static_cast<size_t>(g) * n + f]) continue;
            const double ng = load[g] - c(g, e) + c(g, f), nh = load[h] - c(h, f) + c(h, e);
            if (ng > mx || nh > mx) continue;
            --has[static_cast<size_t>(g) * n + e];
            ++has[static_cast<size_t>(g) * n + f];
            --has[static_cast<size_t>(h) * n + f];
            ++has[static_cast<size_t>(h) * n + e];
            std::swap(ex[g * k + j], ex[h * k + b]);
            load[g] = ng;
            load[h] = nh;
            done = true;
          }
        }
      }
  }

  // Lower bound on the busiest GPU for the current counts: the largest single copy on any GPU, and
  // the mean when costs are GPU-independent.
  double floor_for_counts() const {
    if (!cost.models) {
      double f = 0, total = 0;
      for (int32_t e = 0; e < n; ++e)
        if (cnt[e]) {
          f = std::max(f, per[e]);
          total += w[e];
        }
      return std::max(f, total / P);
    }
    double f = 0, total = 0;
    for (int32_t e = 0; e < n; ++e) {
      double best = std::numeric_limits<double>::infinity();
      for (int32_t g = 0; g < P; ++g) best = std::min(best, c(g, e));
      if (cnt[e]) f = std::max(f, best);
      total += cnt[e] * best;
    }
    return std::max(f, total / P);
  }

  // Cardinality-constrained LPT from copy counts: copies by descending load, each to the GPU with
  // room whose cost after adding it is smallest, avoiding a GPU that already has the expert.
  void lpt(const int32_t* counts) {
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    for (int32_t e = 0; e < n; ++e) per[e] = w[e] / counts[e];
    fill_table();
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return per[a] > per[b] || (per[a] == per[b] && a < b); });
    std::vector<int32_t> fill(P, 0);
    std::fill(load.begin(), load.end(), 0.0);
    std::fill(has.begin(), has.end(), 0);
    // key[g] = load, or +inf once the GPU is full.
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> key(P, 0.0);
    // Identity cost with many GPUs: a min-heap of (load, GPU) over GPUs with room.
    const bool use_heap = !cost.models && P > 16;
    std::vector<std::pair<double, int32_t>> heap;
    auto heap_greater = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
      return a > b;
    };
    if (use_heap) {
      for (int32_t g = 0; g < P; ++g) heap.push_back({0.0, g});
    }
    for (int32_t e : order)
      for (int32_t copy = 0; copy < counts[e]; ++copy) {
        int32_t g = -1;
        if (use_heap) {
          // Pop until a GPU without e (or fall back to the lightest); push the others back.
          std::vector<std::pair<double, int32_t>> skipped;
          while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), heap_greater);
            const auto top = heap.back();
            heap.pop_back();
            if (!has[static_cast<size_t>(top.second) * n + e]) {
              g = top.second;
              break;
            }
            skipped.push_back(top);
          }
          if (g < 0) {
            g = skipped.front().second;
            skipped.erase(skipped.begin());
          }
          for (const auto& x : skipped) {
            heap.push_back(x);
            std::push_heap(heap.begin(), heap.end(), heap_greater);
          }
        } else if (!cost.models) {  // identity cost: the lightest GPU with room, unless it has e
          int32_t b = 0;
          for (int32_t x = 1; x < P; ++x)
            if (key[x] < key[b]) b = x;
          if (!has[static_cast<size_t>(b) * n + e]) g = b;
        }
        if (g < 0) {
          int32_t best = -1, fallback = -1;
          double bv = 0, fv = 0;
          for (int32_t x = 0; x < P; ++x) {
            if (fill[x] == k) continue;
            const double v = load[x] + c(x, e);
            if (has[static_cast<size_t>(x) * n + e]) {
              if (fallback < 0 || v < fv) fallback = x, fv = v;
            } else if (best < 0 || v < bv) {
              best = x, bv = v;
            }
          }
          g = best >= 0 ? best : fallback;
        }
        ex[g * k + fill[g]++] = e;
        load[g] += c(g, e);
        key[g] = fill[g] < k ? load[g] : inf;
        ++has[static_cast<size_t>(g) * n + e];
        if (use_heap && fill[g] < k) {
          heap.push_back({load[g], g});
          std::push_heap(heap.begin(), heap.end(), heap_greater);
        }
      }
    std::copy(counts, counts + n, cnt.begin());  // per, tab, load and has are already current
  }

  // Replica move (time costs): one slot of the busiest GPU changes expert, e -> f, so e loses a copy
  // (it keeps >= 1) and f gains one (at most P, and not a second copy on this GPU). Every GPU holding
  // e or f sees its per-copy cost change, so the move is scored on all GPUs. Applies the move that
  // lowers the busiest GPU the most; false when none lowers it.
  bool move_once() {
    if (!cost.models) return false;
    const int32_t gm = static_cast<int32_t>(std::max_element(load.begin(), load.end()) - load.begin());
    const double cur = load[gm];
    double best = cur - 1e-12 * std::max(1.0, std::abs(cur));
    int32_t bs = -1, bf = -1;
    thread_local std::vector<double> up, down;  // [n*P] cost of a copy after f gains / e loses one
    up.resize(static_cast<size_t>(n) * P);
    down.resize(static_cast<size_t>(P));
    for (int32_t f = 0; f < n; ++f)
      if (cnt[f] < P && !has[static_cast<size_t>(gm) * n + f])
        for (int32_t g = 0; g < P; ++g) up[static_cast<size_t>(f) * P + g] = cost(g, w[f] / (cnt[f] + 1));
    for (int32_t j = 0; j < k; ++j) {
      const int32_t s = gm * k + j, e = ex[s];
      if (cnt[e] < 2) continue;
      for (int32_t g = 0; g < P; ++g) down[g] = cost(g, w[e] / (cnt[e] - 1));
      for (int32_t f = 0; f < n; ++f) {
        if (f == e || cnt[f] >= P || has[static_cast<size_t>(gm) * n + f]) continue;
        const double* uf = up.data() + static_cast<size_t>(f) * P;
        double mx = 0;
        for (int32_t g = 0; g < P && mx < best; ++g) {
          const size_t gn = static_cast<size_t>(g) * n;
          double v = load[g] + has[gn + e] * (down[g] - tab[gn + e]) + has[gn + f] * (uf[g] - tab[gn + f]);
          if (g == gm) v += uf[g] - down[g];
          mx = std::max(mx, v);
        }
        if (mx < best) best = mx, bs = s, bf = f;
      }
    }
    if (bs < 0) return false;
    ex[bs] = bf;
    rebuild();
    return true;
  }

  void sorted_out(int32_t* out) const {
    for (int32_t g = 0; g < P; ++g) {
      std::copy(ex.begin() + g * k, ex.begin() + (g + 1) * k, out + g * k);
      std::sort(out + g * k, out + (g + 1) * k);
    }
  }
};

int32_t default_iters(int32_t P, int32_t k) { return 2 * P * k + 16; }
constexpr int32_t kCountSearchMaxSlots = 5;  // count search only with <= this many slots/GPU
constexpr int32_t kCountShiftRounds = 6;
constexpr int32_t kMoveRounds = 64;  // replica moves per domain (time costs)
constexpr int32_t kSmallDomainSlots = 64;  // time-target counts try 11 targets up to this many slots
constexpr int32_t kCountShiftRoundsManySlots = 2;  // time costs with > kCountSearchMaxSlots slots/GPU
constexpr int32_t kCountSearchMaxGpusManySlots = 16;  // ... on domains of at most this many GPUs


// Copy counts for a time target T (time cost models only). A copy of expert e shares its GPU with
// `others` non-empty copies (k - 1 unless empty experts pad GPUs), each costing at least `fill` (the
// cheapest non-empty copy) on the reference GPU (the fastest for the mean copy), so e needs the
// fewest c <= P copies with t_ref(w_e / c) + others * fill <= T. The remaining slots go, one at a
// time, to the expert whose extra copy adds the least predicted work on the reference GPU (rule 0:
// free copies of compute-bound experts and copies of empty experts first, the finest such copy
// first) or to the largest load per copy (rule 1, the token greedy started from the minimal
// counts). t_ref(w_e / c) is tabulated once for c = 1..P.
class TimeCounts {
 public:
  TimeCounts(const double* w, int32_t n, int32_t P, int32_t k, const CostModel& cost)
      : w_(w), n_(n), P_(P), M_(static_cast<int64_t>(P) * k), tab_(static_cast<size_t>(n) * P) {
    double total = 0, wmin = std::numeric_limits<double>::infinity();
    for (int32_t e = 0; e < n; ++e) {
      total += w[e];
      if (w[e] > 0) wmin = std::min(wmin, w[e]);
    }
    const double mean = total / static_cast<double>(M_);
    int32_t ref = 0;
    double bv = std::numeric_limits<double>::infinity();
    for (int32_t g = 0; g < P; ++g) {
      const double v = cost(g, mean);
      if (v < bv) bv = v, ref = g;
    }
    fill_ = std::isfinite(wmin) ? cost(ref, wmin / P) : 0.0;
    for (int32_t e = 0; e < n; ++e)
      for (int32_t c = 1; c <= P; ++c) tab_[static_cast<size_t>(e) * P + c - 1] = cost(ref, w[e] / c);
  }

  // t_ref(w_e / c), 1 <= c <= P.
  double per(int32_t e, int32_t c) const { return tab_[static_cast<size_t>(e) * P_ + c - 1]; }

  int32_t needed(int32_t e, int32_t others, double target) const {
    if (!(w_[e] > 0)) return 1;
    const double room = target - others * fill_;
    if (per(e, P_) > room) return P_;
    int32_t lo = 1, hi = P_;
    while (lo < hi) {  // smallest c with t_ref(w / c) <= room (t_ref is non-increasing in c)
      const int32_t mid = lo + (hi - lo) / 2;
      if (per(e, mid) <= room)
        hi = mid;
      else
        lo = mid + 1;
    }
    return lo;
  }

  // Smallest target in [lo, hi] (to 0.01%) whose minimal counts fit the slots; 0 when hi's do not.
  double bisect(int32_t others, double lo, double hi) const {
    auto fits = [&](double target) {
      int64_t sum = 0;
      for (int32_t e = 0; e < n_ && sum <= M_; ++e) sum += needed(e, others, target);
      return sum <= M_;
    };
    if (!fits(hi)) return 0.0;
    for (int it = 0; it < 40 && hi - lo > 1e-4 * hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      if (fits(mid))
        hi = mid;
      else
        lo = mid;
    }
    return hi;
  }

  // Counts for a target (rule 0 or 1, see above); false when the minimal counts exceed the slots.
  bool counts(int32_t others, double target, int rule, int32_t* cnt) const {
    int64_t sum = 0;
    for (int32_t e = 0; e < n_; ++e) sum += cnt[e] = needed(e, others, target);
    if (sum > M_) return false;
    for (; sum < M_; ++sum) {
      int32_t bi = -1;
      double bd = 0, bp = 0;
      for (int32_t e = 0; e < n_; ++e) {
        if (cnt[e] >= P_) continue;
        if (rule == 0) {
          const double before = cnt[e] * per(e, cnt[e]), next = per(e, cnt[e] + 1);
          const double d = (cnt[e] + 1) * next - before;
          const double tol = 1e-9 * std::max(1.0, before);
          if (bi < 0 || d < bd - tol || (d <= bd + tol && next < bp)) bi = e, bd = d, bp = next;
        } else if (bi < 0 || w_[e] * cnt[bi] > w_[bi] * cnt[e]) {
          bi = e;
        }
      }
      if (bi < 0) return false;  // every expert at P copies: cannot happen when M <= n * P
      ++cnt[bi];
    }
    return true;
  }

 private:
  const double* w_;
  int32_t n_, P_;
  int64_t M_;
  double fill_ = 0;
  std::vector<double> tab_;  // [n, P]
};

}  // namespace

double packing_cost(const double* w, int32_t n, int32_t P, int32_t k, const int32_t* slot_expert,
                    const CostModel& cost) {
  std::vector<int32_t> cnt(n, 0);
  for (int32_t s = 0; s < P * k; ++s) ++cnt[slot_expert[s]];
  double mx = 0;
  for (int32_t g = 0; g < P; ++g) {
    double sum = 0;
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = slot_expert[g * k + j];
      sum += cost(g, w[e] / cnt[e]);
    }
    mx = std::max(mx, sum);
  }
  return mx;
}

double swap_search(const double* w, int32_t n, int32_t P, int32_t k, const CostModel& cost,
                   int32_t* slot_expert, int32_t max_iters) {
  Packer pk(w, n, P, k, cost);
  std::copy(slot_expert, slot_expert + P * k, pk.ex.begin());
  pk.rebuild();
  pk.search(max_iters, pk.floor_for_counts());
  std::copy(pk.ex.begin(), pk.ex.end(), slot_expert);
  return pk.max_load();
}

double solve_domain(const double* w, int32_t n, int32_t P, int32_t k, const CostModel& cost,
                    const int32_t* start, int32_t* out) {
  const int32_t M = P * k;
  std::vector<int32_t> counts(n);
  greedy_counts(w, n, M, P, counts.data());
  Packer a(w, n, P, k, cost);
  a.lpt(counts.data());
  const double floor = a.floor_for_counts();
  a.search(default_iters(P, k), floor);
  double best = a.max_load();
  a.sorted_out(out);
  if (start && best > floor * (1 + 1e-12)) {
    // The seeded search only runs when the fresh packing is not already better than the seed.
    Packer b(w, n, P, k, cost);
    std::copy(start, start + M, b.ex.begin());
    b.rebuild();
    if (b.max_load() < best) {
    b.search(default_iters(P, k), b.floor_for_counts());
    if (b.max_load() < best) {
      best = b.max_load();
      b.sorted_out(out);
    }
    }
  }
  // Few slots per GPU, or time costs: the copy counts decide how well copies pair up, and the
  // min-max-per-copy counts are often not the best for packing. Try other apportionments (Webster and
  // Huntington-Hill divisors) and exploratory count shifts (one copy moves from a donor expert to an
  // expert on the busiest GPU), re-packing each and keeping the lightest busiest GPU.
  std::optional<Packer> tp;  // built on first use: most token-cost domains never need it
  auto try_counts = [&](const std::vector<int32_t>& c) {
    if (!tp) tp.emplace(w, n, P, k, cost);
    Packer& t = *tp;
    t.lpt(c.data());
    t.search(default_iters(P, k), t.floor_for_counts());
    if (t.max_load() < best) {
      best = t.max_load();
      t.sorted_out(out);
      return true;
    }
    return false;
  };
  // Exploratory count shifts: one copy moves from a donor expert (the smallest load per copy after
  // losing one) to an expert on the busiest GPU; repeated while a round improves.
  auto count_shifts = [&](int32_t rounds) {
    if (!tp) tp.emplace(w, n, P, k, cost);
    Packer& t = *tp;
    for (int32_t round = 0; round < rounds; ++round) {
      std::copy(out, out + M, t.ex.begin());
      t.rebuild();
      if (t.max_load() <= t.floor_for_counts() * (1 + 1e-12)) break;
      const int32_t gm = static_cast<int32_t>(std::max_element(t.load.begin(), t.load.end()) - t.load.begin());
      const std::vector<int32_t> base = t.cnt;
      std::vector<int32_t> receivers, donors;
      for (int32_t j = 0; j < k; ++j) {
        const int32_t x = t.ex[gm * k + j];
        if (base[x] < P && std::find(receivers.begin(), receivers.end(), x) == receivers.end())
          receivers.push_back(x);
      }
      if (k > kCountSearchMaxSlots && receivers.size() > 3) {
        // Many slots per GPU (time costs only): the three heaviest copies of the busiest GPU.
        std::sort(receivers.begin(), receivers.end(), [&](int32_t a, int32_t b) {
          return w[a] * base[b] > w[b] * base[a] || (w[a] * base[b] == w[b] * base[a] && a < b);
        });
        receivers.resize(3);
      }
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        const double va = base[a] >= 2 ? w[a] / (base[a] - 1) : 1e300, vb = base[b] >= 2 ? w[b] / (base[b] - 1) : 1e300;
        return va < vb || (va == vb && a < b);
      });
      // Small domains with time costs: every expert may receive or donate (re-packs are cheap).
      const bool wide = cost.models && M <= kSmallDomainSlots;
      if (wide) {
        receivers.clear();
        for (int32_t x = 0; x < n; ++x)
          if (base[x] < P) receivers.push_back(x);
      }
      for (int32_t x : order)
        if (base[x] >= 2 && (wide || donors.size() < 3)) donors.push_back(x);
      bool improved = false;
      for (int32_t e : receivers)
        for (int32_t f : donors) {
          if (e == f) continue;
          std::vector<int32_t> c = base;
          ++c[e];
          --c[f];
          improved |= try_counts(c);
        }
      if (!improved) break;
    }
  };
  if ((k <= kCountSearchMaxSlots || (cost.models && P <= kCountSearchMaxGpusManySlots)) &&
      best > floor * (1 + 1e-12)) {
    for (int method = 1; method <= 2; ++method) {
      std::vector<int32_t> c(n, 1);
      for (int32_t r = n; r < M; ++r) {
        int32_t bi = -1;
        double bv = -1;
        for (int32_t x = 0; x < n; ++x) {
          if (c[x] >= P) continue;
          const double d = method == 1 ? c[x] + 0.5 : std::sqrt(double(c[x]) * (c[x] + 1));
          const double v = w[x] / d;
          if (v > bv) bv = v, bi = x;
        }
        if (bi < 0) break;
        ++c[bi];
      }
      if (std::accumulate(c.begin(), c.end(), 0) == M) try_counts(c);
    }
    count_shifts(k > kCountSearchMaxSlots ? kCountShiftRoundsManySlots : kCountShiftRounds);
  }
  // Time costs (vibe): copy counts chosen for the time objective, not for tokens (see
  // TimeCounts). They run after the count search above, so they only add candidates to it.
  if (cost.models && M > n && best > floor * (1 + 1e-12)) {
    std::vector<int32_t> c(n);
    std::vector<std::vector<int32_t>> tried;
    auto try_once = [&](const std::vector<int32_t>& v) {
      if (std::find(tried.begin(), tried.end(), v) != tried.end()) return;
      tried.push_back(v);
      try_counts(v);
    };
    // Empty experts' copies cost nothing and can pad a GPU, so a copy may share its GPU with fewer
    // than k - 1 non-empty copies: then every neighbour count from k - 1 down to 0 is tried.
    int32_t n_empty = 0;
    for (int32_t e = 0; e < n; ++e) n_empty += !(w[e] > 0);
    const TimeCounts tc(w, n, P, k, cost);
    const double before = best;
    for (int32_t others = k - 1; others >= (n_empty > 0 ? 0 : k - 1); --others) {
      const double t0 = tc.bisect(others, floor, best);
      if (!(t0 > 0)) continue;
      // Targets from t0 up to halfway to the current best; small domains (cheap re-packs) try more.
      const int32_t steps = M <= kSmallDomainSlots ? 10 : 2;
      for (int32_t i = 0; i <= steps; ++i)
        for (int rule = 0; rule < 2; ++rule)
          if (tc.counts(others, t0 + 0.5 * i / steps * (best - t0), rule, c.data())) try_once(c);
    }
    // A better apportionment can open new count shifts around it.
    if (best < before && best > floor * (1 + 1e-12)) count_shifts(kCountShiftRoundsManySlots);
  }
  // Time costs: alternate replica moves (copy counts change one slot at a time, scored on the time
  // objective) with the swap search until neither lowers the busiest GPU.
  if (cost.models && M > n && best > floor * (1 + 1e-12)) {
    Packer r(w, n, P, k, cost);
    std::copy(out, out + M, r.ex.begin());
    r.rebuild();
    for (int32_t it = 0; it < kMoveRounds && r.move_once(); ++it) r.search(default_iters(P, k), r.floor_for_counts());
    if (r.max_load() < best) {
      best = r.max_load();
      r.sorted_out(out);
    }
  }
  // out is sorted per GPU, so a duplicate sits next to its twin.
  bool dup = false;
  for (int32_t s = 0; s + 1 < M && !dup; ++s) dup = (s + 1) % k != 0 && out[s] == out[s + 1];
  if (dup) {
    Packer d(w, n, P, k, cost);
    std::copy(out, out + M, d.ex.begin());
    d.rebuild();
    d.dedupe();
    if (d.max_load() <= best) {
      best = d.max_load();
      d.sorted_out(out);
    }
  }
  return best;
}

bool best_group_assignment(const double* w, int32_t E, int32_t groups, int32_t nodes,
                           int32_t slots_per_node, int32_t gpus_per_node,
                           std::vector<std::vector<int32_t>>* node_groups, double* bound,
                           const std::vector<std::vector<int32_t>>* other, double* other_bound) {
  const int32_t per = groups / nodes, gsize = E / groups;
  if (groups > 16) return false;
  // Candidate subsets: exactly `per` groups.
  // Candidate subsets in increasing order (Gosper's next-combination step).
  double combos = 1;
  for (int32_t i = 0; i < per; ++i) combos = combos * (groups - i) / (i + 1);
  if (combos > 4096) return false;
  std::vector<uint32_t> subsets;
  for (uint32_t m = (1u << per) - 1; m < (1u << groups);) {
    subsets.push_back(m);
    const uint32_t c = m & (~m + 1u), r = m + c;
    if (r == 0) break;
    m = (((r ^ m) >> 2) / c) | r;
  }
  // Per group: loads sorted descending and their sum; a subset's bound needs its merged order.
  const int32_t n = per * gsize;
  // Only the first R + 2 merged loads matter unless there are no extra copies.
  const int32_t need = slots_per_node > n ? std::min(n, slots_per_node - n + 2) : n;
  std::vector<double> sorted(static_cast<size_t>(E)), gsum(groups, 0.0);
  for (int32_t g = 0; g < groups; ++g) {
    auto first = sorted.begin() + g * gsize;
    std::copy(w + g * gsize, w + (g + 1) * gsize, first);
    std::partial_sort(first, first + std::min(gsize, need), first + gsize, std::greater<double>());
    for (int32_t j = 0; j < gsize; ++j) gsum[g] += w[g * gsize + j];
  }
  std::vector<double> cost(subsets.size()), merged(n), tmp(2 * static_cast<size_t>(n));
  for (size_t i = 0; i < subsets.size(); ++i) {
    int32_t len = 0;
    double W = 0;
    for (int32_t g = 0; g < groups; ++g) {
      if (!(subsets[i] >> g & 1u)) continue;
      W += gsum[g];
      const double* src = sorted.data() + g * gsize;
      const int32_t take = std::min(gsize, need);
      const int32_t out_len = std::min(need, len + take);
      std::merge(merged.begin(), merged.begin() + len, src, src + take, tmp.begin(),
                 std::greater<double>());
      std::copy(tmp.begin(), tmp.begin() + out_len, merged.begin());
      len = out_len;
    }
    // sorted_lower_bound reads p[0..min(n, R + 2)) when there are copies, all n otherwise.
    cost[i] = sorted_lower_bound(merged.data(), n, W, slots_per_node, gpus_per_node);
  }
  // f(remaining) = lexicographic min over subsets containing its lowest group of (max, sum sq).
  const uint32_t full = (1u << groups) - 1;
  std::vector<std::pair<double, double>> memo(1u << groups, {-1.0, 0.0});
  std::vector<int32_t> choice(1u << groups, -1);
  std::function<std::pair<double, double>(uint32_t)> solve = [&](uint32_t rem) -> std::pair<double, double> {
    if (rem == 0) return {0.0, 0.0};
    if (memo[rem].first >= 0) return memo[rem];
    const uint32_t low = rem & (~rem + 1u);
    std::pair<double, double> best{std::numeric_limits<double>::infinity(), 0.0};
    for (size_t i = 0; i < subsets.size(); ++i) {
      const uint32_t s = subsets[i];
      if (!(s & low) || (s & ~rem)) continue;
      const auto sub = solve(rem & ~s);
      const std::pair<double, double> v{std::max(sub.first, cost[i]), sub.second + cost[i] * cost[i]};
      if (v < best) {
        best = v;
        choice[rem] = static_cast<int32_t>(i);
      }
    }
    return memo[rem] = best;
  };
  const auto res = solve(full);
  node_groups->assign(nodes, {});
  uint32_t rem = full;
  for (int32_t node = 0; node < nodes; ++node) {
    const uint32_t s = subsets[choice[rem]];
    for (int32_t g = 0; g < groups; ++g)
      if (s >> g & 1u) (*node_groups)[node].push_back(g);
    rem &= ~s;
  }
  *bound = res.first;
  if (other) {
    *other_bound = 0;
    for (const auto& grp : *other) {
      uint32_t mask = 0;
      for (int32_t g : grp) mask |= 1u << g;
      const size_t i = std::lower_bound(subsets.begin(), subsets.end(), mask) - subsets.begin();
      *other_bound = std::max(*other_bound, cost[i]);
    }
  }
  return true;
}

}  // namespace detail

void PlanRequest::validate() const {
  MOEBAL_CHECK_ARG(loads != nullptr, "plan: loads are missing");
  loads->validate();
  MOEBAL_CHECK_ARG(num_groups > 0, "plan: num_groups must be > 0, got ", num_groups);
  check_layout(loads->num_experts, num_slots, num_gpus, num_nodes);
  if (num_groups > 1 && num_groups % num_nodes == 0)
    MOEBAL_CHECK_ARG(loads->num_experts % num_groups == 0, "plan: num_experts (", loads->num_experts,
                     ") must be divisible by num_groups (", num_groups,
                     ") when groups are kept on nodes (num_groups % num_nodes == 0)");
  if (topology) {
    topology->validate();
    MOEBAL_CHECK_ARG(topology->num_gpus() == num_gpus, "plan: topology has ", topology->num_gpus(),
                     " GPUs but num_gpus is ", num_gpus);
    MOEBAL_CHECK_ARG(topology->num_nodes == num_nodes, "plan: topology has ", topology->num_nodes,
                     " nodes but num_nodes is ", num_nodes);
  }
}

namespace {

using detail::CostModel;

// Per-GPU busiest cost of a full layer row (slot order, as evaluation does).
double row_cost(const double* w, int32_t E, const int32_t* row, int32_t S, int32_t G,
                const CostModel& cost) {
  return detail::packing_cost(w, E, G, S / G, row, cost);
}

// Solves one layer under a group -> node assignment (node_groups; for the global problem one node
// holding every expert). eplb_row, when given, seeds each node with EPLB's packing of that node.
// models: per-GPU models of the whole cluster or null. Writes row [S] and returns its cost.
double solve_layer_assignment(const double* w, int32_t E, int32_t S, int32_t G,
                              const std::vector<std::vector<int32_t>>& node_groups, int32_t gsize,
                              const PerfModel* const* models, const int32_t* eplb_row, int32_t* row) {
  const int32_t N = static_cast<int32_t>(node_groups.size());
  const int32_t Pn = G / N, Mn = S / N, k = S / G;
  double worst = 0;
  std::vector<int32_t> experts, start(Mn), out(Mn), local(E, -1);
  std::vector<double> wn;
  for (int32_t node = 0; node < N; ++node) {
    experts.clear();
    for (int32_t g : node_groups[node])
      for (int32_t j = 0; j < gsize; ++j) experts.push_back(g * gsize + j);
    const int32_t n = static_cast<int32_t>(experts.size());
    wn.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      wn[i] = w[experts[i]];
      local[experts[i]] = i;
    }
    bool seed = eplb_row != nullptr;
    if (seed)
      for (int32_t s = 0; s < Mn && seed; ++s) {
        const int32_t e = eplb_row[node * Mn + s];
        seed = local[e] >= 0;
        if (seed) start[s] = local[e];
      }
    CostModel cost{models ? models + node * Pn : nullptr};
    const double c = detail::solve_domain(wn.data(), n, Pn, k, cost, seed ? start.data() : nullptr,
                                          out.data());
    worst = std::max(worst, c);
    for (int32_t s = 0; s < Mn; ++s) row[node * Mn + s] = experts[out[s]];
    for (int32_t e : experts) local[e] = -1;
  }
  return worst;
}

// EPLB's group -> node assignment (its step 1), groups per node in rank order.
std::vector<std::vector<int32_t>> eplb_node_groups(const double* w, int32_t E, int32_t groups,
                                                   int32_t nodes) {
  const int32_t gsize = E / groups;
  std::vector<double> gw(groups, 0.0);
  for (int32_t e = 0; e < E; ++e) gw[e / gsize] += w[e];
  std::vector<int32_t> pack(groups), rank(groups);
  detail::eplb_pack(gw.data(), groups, nodes, pack.data(), rank.data());
  std::vector<std::vector<int32_t>> ng(nodes, std::vector<int32_t>(groups / nodes));
  for (int32_t g = 0; g < groups; ++g) ng[pack[g]][rank[g]] = g;
  return ng;
}

// balanced (models == null) or vibe (models = per-GPU models) for one layer. eplb_row: EPLB's row.
double solve_layer(const PlanRequest& req, const double* w, const PerfModel* const* models,
                   const int32_t* eplb_row, int32_t* row) {
  const int32_t E = req.loads->num_experts, S = req.num_slots, G = req.num_gpus;
  std::vector<int32_t> cand(S);
  if (!req.group_constrained()) {
    std::vector<std::vector<int32_t>> all(1, std::vector<int32_t>{0});
    return solve_layer_assignment(w, E, S, G, all, E, models, eplb_row, row);
  }
  const int32_t groups = req.num_groups, N = req.num_nodes, gsize = E / groups;
  auto eplb_ng = eplb_node_groups(w, E, groups, N);
  double best = solve_layer_assignment(w, E, S, G, eplb_ng, gsize, models, eplb_row, row);
  std::vector<std::vector<int32_t>> dp_ng;
  double bound = 0;
  // The DP's assignment is only tried when its bound (largest per-node lower bound) is below that
  // of EPLB's assignment; otherwise it cannot be better in the bound's sense and costs a solve.
  double eplb_bound = 0;
  if (detail::best_group_assignment(w, E, groups, N, S / N, G / N, &dp_ng, &bound, &eplb_ng,
                                    &eplb_bound) &&
      bound < eplb_bound * (1 - 1e-12)) {
    // The DP only fixes which groups share a node (node order is free, all nodes are alike).
    const double c = solve_layer_assignment(w, E, S, G, dp_ng, gsize, models, nullptr, cand.data());
    if (c < best) {
      best = c;
      std::copy(cand.begin(), cand.end(), row);
    }
  }
  return best;
}

std::vector<const PerfModel*> model_ptrs(const PlanRequest& req) {
  std::vector<const PerfModel*> v;
  for (const PerfModel& m : req.topology->gpu_models) v.push_back(&m);
  return v;
}

// Runs eplb, then per layer the solver(s), choosing per layer the best row under `cost_models`
// (null: tokens). with_vibe adds the speed-aware solve.
Placement plan_best(const PlanRequest& req, bool with_vibe) {
  req.validate();
  const LoadMatrix& m = *req.loads;
  const int32_t L = m.num_layers, E = m.num_experts, S = req.num_slots, G = req.num_gpus;
  const EplbTables ep = eplb_rebalance(m.loads.data(), L, E, S, req.num_groups, req.num_nodes, G);
  std::vector<const PerfModel*> mp;
  if (with_vibe) mp = model_ptrs(req);
  const PerfModel* const* models = with_vibe ? mp.data() : nullptr;
  CostModel eval{models};
  std::vector<int32_t> phy2log(static_cast<size_t>(L) * S), cand(S);
  for (int32_t l = 0; l < L; ++l) {
    const double* w = m.row(l);
    const int32_t* erow = ep.phy2log.data() + static_cast<size_t>(l) * S;
    int32_t* row = phy2log.data() + static_cast<size_t>(l) * S;
    solve_layer(req, w, nullptr, erow, row);  // balanced (token cost)
    double best = row_cost(w, E, row, S, G, eval);
    if (with_vibe) {
      solve_layer(req, w, models, erow, cand.data());
      const double c = row_cost(w, E, cand.data(), S, G, eval);
      if (c < best) {
        best = c;
        std::copy(cand.begin(), cand.end(), row);
      }
    }
    // EPLB's row only when strictly better (ours avoids duplicate copies on a GPU, EPLB's may not).
    if (row_cost(w, E, erow, S, G, eval) < best) std::copy(erow, erow + S, row);
  }
  return Placement::from_phy2log(L, E, S, G, req.num_nodes, std::move(phy2log));
}

}  // namespace

Placement plan_balanced(const PlanRequest& req) { return plan_best(req, false); }

Placement plan_vibe(const PlanRequest& req) {
  req.validate();
  MOEBAL_CHECK_ARG(req.topology != nullptr && !req.topology->gpu_models.empty(),
                   "policy 'vibe' needs a topology with one performance model per GPU "
                   "(topology.gpu_models)");
  return plan_best(req, true);
}

const std::vector<PlacementPolicyInfo>& placement_policies() {
  static const std::vector<PlacementPolicyInfo> v = {
      {"eplb", "DeepSeek EPLB: hierarchical (groups->nodes, replicate, pack) or global greedy", &plan_eplb},
      {"balanced", "EPLB's budget and constraints; optimal copy counts, LPT + swap search, never worse than eplb", &plan_balanced},
      {"vibe", "ViBE: minimise the slowest GPU's predicted time under per-GPU perf models", &plan_vibe},
  };
  return v;
}

Placement plan_placement(const std::string& policy, const PlanRequest& req) {
  std::string names;
  for (const auto& p : placement_policies()) {
    if (policy == p.name) return p.fn(req);
    names += (names.empty() ? "" : ", ") + std::string(p.name);
  }
  MOEBAL_CHECK_ARG(false, "unknown placement policy '", policy, "'; available: ", names);
  return {};
}

}  // namespace moebal::core
