// Helpers shared by the googletest suites.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "moebal/core/error.h"

/// Expects `stmt` to throw moebal::ValueError whose message contains `needle`.
#define EXPECT_VALUE_ERROR(stmt, needle)                                            \
  do {                                                                              \
    try {                                                                           \
      stmt;                                                                         \
      ADD_FAILURE() << "expected moebal::ValueError from " #stmt;                   \
    } catch (const moebal::ValueError& e) {                                         \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                               \
  } while (0)
