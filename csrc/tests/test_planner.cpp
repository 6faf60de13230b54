// C++ unit tests of the reallocation planner (no torch, no process group): box
// arithmetic, and the plan invariants on random tilings of random parameters.
#include <algorithm>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "realloc/planner.h"

using namespace real_ext::realloc;

namespace {

int failures = 0;

void expect(bool cond, const std::string& what) {
  if (!cond) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

void test_subtract() {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> coord(0, 12);
  for (int trial = 0; trial < 2000; ++trial) {
    Box a{coord(rng), coord(rng), coord(rng), coord(rng)};
    Box b{coord(rng), coord(rng), coord(rng), coord(rng)};
    if (a.empty()) continue;
    const std::vector<Box> rest = subtract(a, b);
    int64_t area = intersect(a, b).empty() ? 0 : intersect(a, b).area();
    for (size_t i = 0; i < rest.size(); ++i) {
      area += rest[i].area();
      expect(intersect(rest[i], b).empty(), "a piece of a - b overlaps b");
      expect(intersect(rest[i], a) == rest[i], "a piece of a - b leaves a");
      for (size_t j = i + 1; j < rest.size(); ++j) expect(intersect(rest[i], rest[j]).empty(), "pieces overlap");
    }
    expect(area == a.area(), "a - b and a & b do not tile a");
  }
}

// Splits [0, n) into k nearly equal ranges.
std::vector<std::pair<int64_t, int64_t>> ranges(int64_t n, int64_t k) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t i = 0; i < k; ++i) out.push_back({n * i / k, n * (i + 1) / k});
  return out;
}

// A random layout: each parameter split into row x column tiles, each tile held
// by up to three distinct ranks (a rank holds at most one shard of a parameter);
// returns shards with dense local storage.
std::vector<Shard> random_layout(const std::vector<Box>& params, int64_t world, std::mt19937& rng) {
  std::uniform_int_distribution<int> parts(1, 4), reps(1, 3);
  std::vector<int64_t> ranks(world);
  for (int64_t i = 0; i < world; ++i) ranks[i] = i;
  std::vector<int64_t> used(world, 0);  // flat offset per rank
  std::vector<Shard> shards;
  for (size_t p = 0; p < params.size(); ++p) {
    std::shuffle(ranks.begin(), ranks.end(), rng);
    const auto rows = ranges(params[p].r1, parts(rng));
    const auto cols = ranges(params[p].c1, params[p].c1 > 1 ? parts(rng) : 1);
    const int64_t tiles = static_cast<int64_t>(rows.size() * cols.size());
    const int64_t replicas = std::min<int64_t>(reps(rng), world / tiles);
    size_t next = 0;
    for (auto [r0, r1] : rows)
      for (auto [c0, c1] : cols)
        for (int64_t k = 0; k < replicas; ++k) {
          const int64_t rank = ranks[next++];
          const Box b{r0, r1, c0, c1};
          shards.push_back({rank, static_cast<int64_t>(p), b, used[rank], b.cols()});
          used[rank] += b.area();
        }
  }
  return shards;
}

void test_random_plans() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dim(1, 40), count(1, 6), world(16, 48);
  for (int trial = 0; trial < 300; ++trial) {
    PlanInput in;
    const int n = count(rng);
    for (int p = 0; p < n; ++p) in.params.push_back({0, dim(rng), 0, p % 3 == 0 ? 1 : dim(rng)});
    const int64_t w = world(rng);
    in.src = random_layout(in.params, w, rng);
    in.dst = random_layout(in.params, w, rng);
    in.workers_per_node = 1 + trial % 8;
    in.split_elements = 16;
    PlanStats stats;
    const std::vector<Transfer> plan = make_plan(in, &stats);
    const std::string problem = verify_plan(in, plan);
    expect(problem.empty(), "trial " + std::to_string(trial) + ": " + problem);
    expect(stats.elements_moved == stats.elements_lower_bound,
           "trial " + std::to_string(trial) + ": moved " + std::to_string(stats.elements_moved) + " != bound " +
               std::to_string(stats.elements_lower_bound));
    PlanStats again;
    const std::vector<Transfer> plan2 = make_plan(in, &again);
    bool same = plan.size() == plan2.size();
    for (size_t i = 0; same && i < plan.size(); ++i)
      same = plan[i].src_rank == plan2[i].src_rank && plan[i].dst_rank == plan2[i].dst_rank &&
             plan[i].box == plan2[i].box;
    expect(same, "trial " + std::to_string(trial) + ": plans differ between two runs");
  }
}

void test_uncovered_destination_is_an_error() {
  PlanInput in;
  in.params = {{0, 4, 0, 4}};
  in.src = {{0, 0, {0, 2, 0, 4}, 0, 4}};  // rows 2..3 held by nobody
  in.dst = {{1, 0, {0, 4, 0, 4}, 0, 4}};
  bool threw = false;
  try {
    make_plan(in, nullptr);
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()).find("no source shard holds") != std::string::npos;
  }
  expect(threw, "a destination element without a source must be refused");
}

}  // namespace

int main() {
  test_subtract();
  test_random_plans();
  test_uncovered_destination_is_an_error();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all planner tests passed\n");
  return 0;
}
