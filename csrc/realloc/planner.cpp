#include "realloc/planner.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace real_ext::realloc {
namespace {

bool contains(const Box& outer, const Box& inner) {
  return inner.r0 >= outer.r0 && inner.r1 <= outer.r1 && inner.c0 >= outer.c0 && inner.c1 <= outer.c1;
}

// NOTE: std::to_string, not iostreams: see common/check.h on the GPU image's toolchain.
std::string str(const Box& b) {
  return "[" + std::to_string(b.r0) + ":" + std::to_string(b.r1) + ", " + std::to_string(b.c0) + ":" +
         std::to_string(b.c1) + "]";
}

// Splits a piece into n nearly equal parts along rows (or columns when it has
// fewer rows than parts).
std::vector<Box> split(const Box& b, int64_t n) {
  std::vector<Box> parts;
  const bool by_rows = b.rows() >= n;
  const int64_t len = by_rows ? b.rows() : b.cols();
  n = std::min(n, len);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = len * i / n, hi = len * (i + 1) / n;
    parts.push_back(by_rows ? Box{b.r0 + lo, b.r0 + hi, b.c0, b.c1} : Box{b.r0, b.r1, b.c0 + lo, b.c0 + hi});
  }
  return parts;
}

class Planner {
 public:
  Planner(const PlanInput& in) : in_(in), by_param_(in.params.size()) {
    for (const auto* side : {&in.src, &in.dst})
      for (const Shard& s : *side) {
        if (s.param < 0 || s.param >= static_cast<int64_t>(in.params.size()))
          throw std::invalid_argument("shard of rank " + std::to_string(s.rank) + " names parameter " +
                                      std::to_string(s.param) + ", which does not exist");
        if (!contains(in.params[s.param], s.box))
          throw std::invalid_argument("shard " + str(s.box) + " of rank " + std::to_string(s.rank) +
                                      " lies outside parameter " + std::to_string(s.param) + " " +
                                      str(in.params[s.param]));
      }
    for (const Shard& s : in.src) {
      if (s.box.empty()) continue;  // holds nothing (e.g. a vocab shard past the real vocabulary)
      by_param_[s.param].push_back(&s);
      auto key = std::make_pair(s.rank, s.param);
      if (!src_of_.emplace(key, &s).second)
        throw std::invalid_argument("rank " + std::to_string(s.rank) + " holds two source shards of parameter " +
                                    std::to_string(s.param));
    }
    for (auto& v : by_param_)
      std::sort(v.begin(), v.end(), [](const Shard* a, const Shard* b) {
        return a->box == b->box ? a->rank < b->rank : a->box < b->box;
      });
  }

  std::vector<Transfer> run(PlanStats* stats) {
    std::vector<const Shard*> dst;
    for (const Shard& d : in_.dst)
      if (!d.box.empty()) dst.push_back(&d);
    std::sort(dst.begin(), dst.end(), [](const Shard* a, const Shard* b) {
      return a->param != b->param ? a->param < b->param : a->rank < b->rank;
    });
    PlanStats st;
    for (const Shard* d : dst) {
      std::vector<Box> remaining = {d->box};
      auto own = src_of_.find({d->rank, d->param});
      if (own != src_of_.end()) {
        const Box local = intersect(d->box, own->second->box);
        if (!local.empty()) {
          emit(*own->second, *d, local);
          st.elements_local += local.area();
          remaining = subtract(d->box, own->second->box);
        }
      }
      for (const Box& r : remaining) st.elements_lower_bound += r.area();
      // Cover what is left tile by tile (distinct source boxes, in a fixed order).
      const Box* last_tile = nullptr;
      for (const Shard* tile : by_param_[d->param]) {
        if (last_tile && *last_tile == tile->box) continue;
        last_tile = &tile->box;
        std::vector<Box> next;
        for (const Box& r : remaining) {
          const Box piece = intersect(r, tile->box);
          if (piece.empty()) {
            next.push_back(r);
            continue;
          }
          assign(*d, piece);
          for (const Box& rest : subtract(r, tile->box)) next.push_back(rest);
        }
        remaining.swap(next);
        if (remaining.empty()) break;
      }
      if (!remaining.empty())
        throw std::invalid_argument("destination rank " + std::to_string(d->rank) + " needs " +
                                    str(remaining.front()) + " of parameter " + std::to_string(d->param) +
                                    ", which no source shard holds");
    }
    for (const Transfer& t : plan_)
      if (!t.local()) st.elements_moved += t.box.area();
    if (stats) *stats = st;
    return plan_;
  }

 private:
  int64_t node(int64_t rank) const { return rank / std::max<int64_t>(in_.workers_per_node, 1); }

  // Choose the source(s) of a piece the destination does not hold.
  void assign(const Shard& d, const Box& piece) {
    std::vector<const Shard*> holders;
    for (const Shard* s : by_param_[d.param])
      if (contains(s->box, piece)) holders.push_back(s);
    std::vector<const Shard*> near;
    for (const Shard* s : holders)
      if (node(s->rank) == node(d.rank)) near.push_back(s);
    const std::vector<const Shard*>& pool = near.empty() ? holders : near;
    const int64_t n = piece.area() > in_.split_elements ? static_cast<int64_t>(pool.size()) : 1;
    for (const Box& part : split(piece, n)) {
      const Shard* best = nullptr;
      for (const Shard* s : pool)
        if (!best || load_[s->rank] < load_[best->rank] ||
            (load_[s->rank] == load_[best->rank] && s->rank < best->rank))
          best = s;
      load_[best->rank] += part.area();
      emit(*best, d, part);
    }
  }

  void emit(const Shard& s, const Shard& d, const Box& b) {
    plan_.push_back({s.rank, d.rank, d.param, b, s.at(b.r0, b.c0), s.ld, d.at(b.r0, b.c0), d.ld});
  }

  const PlanInput& in_;
  std::vector<std::vector<const Shard*>> by_param_;
  std::map<std::pair<int64_t, int64_t>, const Shard*> src_of_;
  std::map<int64_t, int64_t> load_;
  std::vector<Transfer> plan_;
};

}  // namespace

std::vector<Transfer> make_plan(const PlanInput& in, PlanStats* stats) { return Planner(in).run(stats); }

std::string verify_plan(const PlanInput& in, const std::vector<Transfer>& plan) {
  std::map<std::pair<int64_t, int64_t>, const Shard*> src, dst;
  for (const Shard& s : in.src)
    if (!s.box.empty()) src[{s.rank, s.param}] = &s;
  for (const Shard& s : in.dst)
    if (!s.box.empty()) dst[{s.rank, s.param}] = &s;
  std::map<std::pair<int64_t, int64_t>, std::vector<Box>> written;
  for (const Transfer& t : plan) {
    auto d = dst.find({t.dst_rank, t.param});
    auto s = src.find({t.src_rank, t.param});
    if (d == dst.end()) return "a transfer targets rank " + std::to_string(t.dst_rank) + ", which holds no shard of parameter " + std::to_string(t.param);
    if (s == src.end() || !contains(s->second->box, t.box))
      return "rank " + std::to_string(t.src_rank) + " sends " + str(t.box) + " of parameter " +
             std::to_string(t.param) + " without holding it";
    if (!contains(d->second->box, t.box)) return "a transfer writes outside the destination shard";
    if (t.src_offset != s->second->at(t.box.r0, t.box.c0) || t.dst_offset != d->second->at(t.box.r0, t.box.c0) ||
        t.src_ld != s->second->ld || t.dst_ld != d->second->ld)
      return "a transfer's buffer offsets do not match its shards";
    written[{t.dst_rank, t.param}].push_back(t.box);
  }
  for (const Shard& d : in.dst) {
    if (d.box.empty()) continue;
    auto& boxes = written[{d.rank, d.param}];
    int64_t area = 0;
    for (size_t i = 0; i < boxes.size(); ++i) {
      area += boxes[i].area();
      for (size_t j = i + 1; j < boxes.size(); ++j)
        if (!intersect(boxes[i], boxes[j]).empty())
          return "rank " + std::to_string(d.rank) + " receives " + str(intersect(boxes[i], boxes[j])) +
                 " of parameter " + std::to_string(d.param) + " twice";
    }
    if (area != d.box.area())
      return "rank " + std::to_string(d.rank) + " gets " + std::to_string(area) + " of the " +
             std::to_string(d.box.area()) + " elements of parameter " + std::to_string(d.param) + " it needs";
  }
  return "";
}

}  // namespace real_ext::realloc
