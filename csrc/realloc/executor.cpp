// Carries out a reallocation plan on one rank over a c10d ProcessGroup (gloo on
// CPU, NCCL on GPU: the same code). The traffic to and from each peer is cut
// into chunks, identically by sender and receiver. Order of work, identical on
// every rank:
//   1. the first two rounds of staged chunks (those strided in either buffer,
//      and short runs batched together) posted: round r packs chunk r for
//      every peer into a send buffer and receives chunk r from every peer into
//      a receive buffer, two buffers (slots) each per peer at least, so
//      staging stays within max_buffer_bytes;
//   2. chunks that are one contiguous box in both buffers (usually most bytes:
//      whole shards of consecutive parameters merge into long runs): every send
//      and receive posted at once, straight from / into the flat buffers;
//   3. the further staged rounds that max_buffer_bytes has slots for (all of
//      them when the staged traffic fits);
//   4. pieces this rank already holds: copied locally, while 1-3 are on the
//      wire;
//   5. staged round r waited for and unpacked while the later rounds posted
//      are on the wire; round r + slots posted into the buffers r freed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/library.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <optional>

#include "common/check.h"
#include "realloc/pack_boxes.h"
#include "realloc/plan_tensors.h"

namespace real_ext::realloc {
namespace {

// A run of sub-boxes sent as one contiguous buffer.
struct Chunk {
  std::vector<PackBox> src, dst;  // the same sub-boxes, addressed in the source / destination buffer
  int64_t elements = 0;
};

// Runs shorter than this many elements are batched into staged chunks; longer
// ones are sent on their own, straight between the flat buffers.
constexpr int64_t kDirectMin = 1 << 14;

// Cuts the transfers (in plan order) into chunks of at most cap elements.
// Transfers contiguous in both buffers and adjacent to the previous one in both
// are first merged into runs (whole shards of consecutive parameters usually
// are), so that most bytes travel as a few large contiguous messages.
std::vector<Chunk> make_chunks(const std::vector<const Transfer*>& transfers, int64_t cap, int64_t direct_cap) {
  struct Run {
    int64_t src, dst, n;
  };
  std::vector<Run> runs;
  // one_sided: large boxes contiguous in one buffer only (a tp column slice):
  // sent in their own chunks, so that only the strided side copies.
  std::vector<const Transfer*> strided, one_sided;
  for (const Transfer* t : transfers) {
    const Box& b = t->box;
    const bool flat_src = b.rows() == 1 || t->src_ld == b.cols();
    const bool flat_dst = b.rows() == 1 || t->dst_ld == b.cols();
    if (!(flat_src && flat_dst)) {
      (b.area() >= kDirectMin && (flat_src || flat_dst) ? one_sided : strided).push_back(t);
      continue;
    }
    if (!runs.empty() && runs.back().src + runs.back().n == t->src_offset &&
        runs.back().dst + runs.back().n == t->dst_offset)
      runs.back().n += b.area();
    else
      runs.push_back({t->src_offset, t->dst_offset, b.area()});
  }
  std::vector<Chunk> chunks;
  // Long runs: their own chunks, one contiguous box each (no staging: only
  // direct_cap bounds them, to keep single messages moderate).
  for (const Run& r : runs) {
    if (r.n < kDirectMin) continue;
    for (int64_t lo = 0; lo < r.n; lo += direct_cap) {
      const int64_t n = std::min(direct_cap, r.n - lo);
      Chunk c;
      c.src.push_back({r.src + lo, n, 1, n, 0});
      c.dst.push_back({r.dst + lo, n, 1, n, 0});
      c.elements = n;
      chunks.push_back(std::move(c));
    }
  }
  auto single = [&](const Transfer* t, int64_t dr, int64_t col, int64_t rows, int64_t cols) {
    Chunk c;
    c.src.push_back({t->src_offset + dr * t->src_ld + col, t->src_ld, rows, cols, 0});
    c.dst.push_back({t->dst_offset + dr * t->dst_ld + col, t->dst_ld, rows, cols, 0});
    c.elements = rows * cols;
    chunks.push_back(std::move(c));
  };
  for (const Transfer* t : one_sided) {
    const Box& b = t->box;
    if (b.cols() <= cap) {  // slabs of whole rows
      const int64_t per = cap / b.cols();
      for (int64_t r = b.r0; r < b.r1; r += per) single(t, r - b.r0, 0, std::min(per, b.r1 - r), b.cols());
    } else {  // rows wider than a chunk: column pieces
      for (int64_t r = b.r0; r < b.r1; ++r)
        for (int64_t col = 0; col < b.cols(); col += cap) single(t, r - b.r0, col, 1, std::min(cap, b.cols() - col));
    }
  }
  // Everything else, batched up to cap elements per staged chunk.
  std::vector<Chunk> staged(1);
  auto room = [&] { return cap - staged.back().elements; };
  auto add = [&](int64_t src_off, int64_t src_ld, int64_t dst_off, int64_t dst_ld, int64_t rows, int64_t cols) {
    Chunk& c = staged.back();
    c.src.push_back({src_off, src_ld, rows, cols, c.elements});
    c.dst.push_back({dst_off, dst_ld, rows, cols, c.elements});
    c.elements += rows * cols;
  };
  for (const Run& r : runs) {
    if (r.n >= kDirectMin) continue;
    for (int64_t lo = 0; lo < r.n;) {
      if (room() == 0) staged.emplace_back();
      const int64_t n = std::min(room(), r.n - lo);
      add(r.src + lo, n, r.dst + lo, n, 1, n);
      lo += n;
    }
  }
  for (const Transfer* t : strided) {
    const Box& b = t->box;
    for (int64_t r = b.r0; r < b.r1;) {
      if (room() == 0) staged.emplace_back();
      const int64_t dr = r - b.r0;
      if (b.cols() <= room()) {  // whole rows fit
        const int64_t rows = std::min(b.r1 - r, room() / b.cols());
        add(t->src_offset + dr * t->src_ld, t->src_ld, t->dst_offset + dr * t->dst_ld, t->dst_ld, rows, b.cols());
        r += rows;
      } else {  // one row is wider than a chunk: send it in column pieces
        for (int64_t col = 0; col < b.cols();) {
          if (room() == 0) staged.emplace_back();
          const int64_t cols = std::min(b.cols() - col, room());
          add(t->src_offset + dr * t->src_ld + col, t->src_ld, t->dst_offset + dr * t->dst_ld + col, t->dst_ld, 1,
              cols);
          col += cols;
        }
        r += 1;
      }
    }
  }
  for (Chunk& c : staged)
    if (c.elements > 0) chunks.push_back(std::move(c));
  return chunks;
}

at::Tensor boxes_tensor(const std::vector<PackBox>& boxes) {
  at::Tensor t = at::empty({static_cast<int64_t>(boxes.size()), 5}, at::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  for (const PackBox& b : boxes) {
    const int64_t row[5] = {b.offset, b.ld, b.rows, b.cols, b.buf_offset};
    p = std::copy(row, row + 5, p);
  }
  return t;
}

// Packs chunk c into the front of the staging buffer `stage`; returns that part.
at::Tensor pack(const at::Tensor& flat, const Chunk& c, const at::Tensor& stage) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("real_ext::realloc_pack_into", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, at::Tensor&)>();
  at::Tensor part = stage.narrow(0, 0, c.elements);
  op.call(flat, boxes_tensor(c.src), part);
  return part;
}

constexpr int kDirectTag = 1, kStagedTag = 2;
// Staged rounds in flight at once (a send and a receive buffer per peer each).
constexpr int64_t kDepth = 2;
constexpr int64_t kDirectCap = int64_t(1) << 26;  // elements per straight message

// One box that is contiguous in its buffer: sent or received in place, no staging.
bool contiguous(const std::vector<PackBox>& boxes) {
  return boxes.size() == 1 && (boxes[0].rows == 1 || boxes[0].ld == boxes[0].cols);
}

void unpack(at::Tensor& flat, const at::Tensor& buffer, const Chunk& c, double eta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("real_ext::realloc_unpack_", "")
                       .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  op.call(flat, buffer, boxes_tensor(c.dst), eta);
}

// Staging memory kept between calls on the CPU, one block per dtype: fresh
// buffers each call cost page faults and the kernel's zeroing of every page
// (tens of MB per rank per call; with 8 ranks on 2 cores that doubled the
// staged traffic's time). A call takes the block out of the cache while it
// runs (a concurrent call allocates its own) and puts it back after; a block
// larger than the call's max_buffer_bytes is dropped, so a process keeps at
// most the last call's cap per dtype. CUDA's caching allocator already
// reuses device memory: there the block is allocated and freed as usual.
class Arena {
 public:
  Arena(const at::TensorOptions& opts, int64_t elements, int64_t limit) : cached_(opts.device().is_cpu()) {
    if (cached_) {
      std::lock_guard<std::mutex> lock(mutex());
      auto& cache = blocks();
      for (auto it = cache.begin(); it != cache.end(); ++it)
        if (it->scalar_type() == opts.dtype().toScalarType()) {
          if (it->numel() <= limit) memory_ = std::move(*it);
          cache.erase(it);
          break;
        }
    }
    if (!memory_.defined() || memory_.numel() < elements) memory_ = at::empty({elements}, opts);
  }
  ~Arena() {
    if (!cached_) return;
    std::lock_guard<std::mutex> lock(mutex());
    auto& cache = blocks();
    for (at::Tensor& kept : cache)
      if (kept.scalar_type() == memory_.scalar_type()) {
        if (kept.numel() < memory_.numel()) kept = std::move(memory_);
        return;
      }
    cache.push_back(std::move(memory_));
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  const at::Tensor& memory() const { return memory_; }

 private:
  static std::vector<at::Tensor>& blocks() {
    static std::vector<at::Tensor> cache;
    return cache;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  bool cached_;
  at::Tensor memory_;
};

int64_t realloc_execute(const at::Tensor& transfers, const std::optional<at::Tensor>& src_flat,
                     const std::optional<at::Tensor>& dst_flat, const std::string& group_name,
                     int64_t max_buffer_bytes, double eta) {
  const std::vector<Transfer> plan = read_transfers(transfers);
  const c10::intrusive_ptr<c10d::ProcessGroup> group = c10d::resolve_process_group(group_name);
  const int64_t me = group->getRank(), size = group->getSize();
  std::vector<std::vector<const Transfer*>> out(size), in(size);
  std::vector<const Transfer*> local;
  for (const Transfer& t : plan) {
    REAL_EXT_CHECK_VALUE(t.src_rank >= 0 && t.src_rank < size && t.dst_rank >= 0 && t.dst_rank < size,
                         "realloc_execute: the plan names rank ", std::max(t.src_rank, t.dst_rank),
                         " but the process group has ", size, " ranks");
    if (t.src_rank == me && t.dst_rank == me) local.push_back(&t);
    else if (t.src_rank == me) out[t.dst_rank].push_back(&t);
    else if (t.dst_rank == me) in[t.src_rank].push_back(&t);
  }
  const bool sends = !local.empty() || std::any_of(out.begin(), out.end(), [](auto& v) { return !v.empty(); });
  const bool recvs = !local.empty() || std::any_of(in.begin(), in.end(), [](auto& v) { return !v.empty(); });
  REAL_EXT_CHECK_VALUE(!sends || src_flat.has_value(), "realloc_execute: rank ", me,
                       " sends parameters but got src_flat=None");
  REAL_EXT_CHECK_VALUE(!recvs || dst_flat.has_value(), "realloc_execute: rank ", me,
                       " receives parameters but got dst_flat=None");
  if (!src_flat.has_value() && !dst_flat.has_value()) return 0;  // nothing to do here
  const at::Tensor& any = src_flat.has_value() ? *src_flat : *dst_flat;
  // Staging: kDepth send and receive buffers per peer (staged rounds in
  // flight at once) plus one for local pieces, each at most `cap` elements,
  // so that all peers are served at once within max_buffer_bytes.
  const int64_t buffers = 2 * kDepth * std::max<int64_t>(size - 1, 1) + 1;
  const int64_t cap = max_buffer_bytes / buffers / any.element_size();
  REAL_EXT_CHECK_VALUE(cap >= 1, "realloc_execute: max_buffer_bytes=", max_buffer_bytes,
                       " leaves no staging room; give at least ", buffers * any.element_size(), " bytes");
  at::Tensor dst = dst_flat.has_value() ? *dst_flat : at::Tensor();

  // Direct chunks (one contiguous box on both sides) travel straight from the
  // source buffer into the destination buffer; the rest is staged. Both sides
  // classify and cut a stream the same way (they see the same boxes); the two
  // kinds use different tags so that their messages never match each other.
  const bool in_place = eta == 1.0;  // blending needs the received values staged
  auto direct = [&](const Chunk& c) { return in_place && contiguous(c.src) && contiguous(c.dst); };
  std::vector<std::vector<Chunk>> send_chunks(size), recv_chunks(size), send_direct(size), recv_direct(size);
  std::vector<int64_t> send_max(size, 0), recv_max(size, 0);
  for (int64_t p = 0; p < size; ++p) {
    for (Chunk& c : make_chunks(in[p], cap, kDirectCap)) {
      if (direct(c)) {
        recv_direct[p].push_back(std::move(c));
        continue;
      }
      if (!(in_place && contiguous(c.dst))) recv_max[p] = std::max(recv_max[p], c.elements);
      recv_chunks[p].push_back(std::move(c));
    }
    for (Chunk& c : make_chunks(out[p], cap, kDirectCap)) {
      if (direct(c)) {
        send_direct[p].push_back(std::move(c));
        continue;
      }
      if (!contiguous(c.src)) send_max[p] = std::max(send_max[p], c.elements);
      send_chunks[p].push_back(std::move(c));
    }
  }
  // Local pieces: one copy where either side is contiguous (a tp column slice
  // into or out of a whole parameter), else staged through one more buffer of
  // this rank's own.
  const std::vector<Chunk> local_chunks = make_chunks(local, cap, kDirectCap);
  int64_t local_max = 0;
  for (const Chunk& c : local_chunks)
    if (!(in_place && contiguous(c.dst)) && !contiguous(c.src)) local_max = std::max(local_max, c.elements);
  // Buffer slots per peer: kDepth at least (what cap was cut for), more where
  // max_buffer_bytes holds them, up to one per round: every staged round then
  // goes on the wire at once and no rank waits for a round to drain before
  // posting the next (on a busy CPU such lock-steps cost several ms each).
  size_t rounds = 0;
  int64_t per_slot = 0;
  for (int64_t p = 0; p < size; ++p) {
    rounds = std::max({rounds, send_chunks[p].size(), recv_chunks[p].size()});
    per_slot += send_max[p] + recv_max[p];
  }
  const int64_t room = max_buffer_bytes / any.element_size() - local_max;
  const size_t fit = per_slot > 0 ? static_cast<size_t>(std::max<int64_t>(room / per_slot, 0)) : rounds;
  const size_t slots = std::min(rounds, std::max<size_t>(kDepth, fit));
  const at::TensorOptions opts = any.options();
  // All staging buffers are slices of one arena kept between calls.
  const int64_t staged_elements = static_cast<int64_t>(slots) * per_slot + local_max;
  Arena arena(opts, staged_elements, max_buffer_bytes / any.element_size());
  int64_t carved = 0;
  auto carve = [&](int64_t n) {
    at::Tensor t = arena.memory().narrow(0, carved, n);
    carved += n;
    return t;
  };
  std::vector<std::vector<at::Tensor>> send_stage(size), recv_stage(size);  // [peer][slot]
  for (int64_t p = 0; p < size; ++p)
    for (size_t i = 0; i < slots; ++i) {
      send_stage[p].push_back(carve(send_max[p]));
      recv_stage[p].push_back(carve(recv_max[p]));
    }
  const at::Tensor local_stage = carve(local_max);

  // Staged round r moves chunk r of every peer's stream, all peers at once,
  // through buffer slot r % slots; the rounds after r that have slots are on
  // the wire (and packed) while round r is unpacked.
  struct Round {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::vector<std::vector<at::Tensor>> bufs;
    std::vector<std::pair<int64_t, size_t>> to_unpack;  // (peer, index into bufs)
  };
  auto post = [&](size_t r) {
    Round round;
    round.bufs.reserve(2 * size);
    for (int64_t p = 0; p < size; ++p) {
      if (r >= recv_chunks[p].size()) continue;
      const Chunk& c = recv_chunks[p][r];
      const bool into_place = in_place && contiguous(c.dst);
      round.bufs.push_back({into_place ? dst.narrow(0, c.dst[0].offset, c.elements)
                                       : recv_stage[p][r % slots].narrow(0, 0, c.elements)});
      round.works.push_back(group->recv(round.bufs.back(), static_cast<int>(p), kStagedTag));
      if (!into_place) round.to_unpack.push_back({p, round.bufs.size() - 1});
    }
    for (int64_t p = 0; p < size; ++p) {
      if (r >= send_chunks[p].size()) continue;
      const Chunk& c = send_chunks[p][r];
      round.bufs.push_back({contiguous(c.src) ? src_flat->narrow(0, c.src[0].offset, c.elements)
                                              : pack(*src_flat, c, send_stage[p][r % slots])});
      round.works.push_back(group->send(round.bufs.back(), static_cast<int>(p), kStagedTag));
    }
    return round;
  };
  auto finish = [&](Round& round, size_t r) {
    for (auto& w : round.works) w->wait();
    for (auto [p, i] : round.to_unpack) unpack(dst, round.bufs[i][0], recv_chunks[p][r], eta);
  };

  // Order of posting: the first kDepth staged rounds, then every direct
  // chunk, then the other rounds that have slots, so that packing and
  // unpacking overlap the direct traffic.
  std::deque<Round> in_flight;
  size_t posted = 0;
  for (; posted < std::min<size_t>(slots, kDepth); ++posted) in_flight.push_back(post(posted));
  std::vector<c10::intrusive_ptr<c10d::Work>> direct_work;
  std::vector<std::vector<at::Tensor>> direct_bufs;
  for (int64_t p = 0; p < size; ++p) {
    for (const Chunk& c : recv_direct[p]) {
      std::vector<at::Tensor> buf{dst.narrow(0, c.dst[0].offset, c.elements)};
      direct_work.push_back(group->recv(buf, static_cast<int>(p), kDirectTag));
      direct_bufs.push_back(std::move(buf));
    }
    for (const Chunk& c : send_direct[p]) {
      std::vector<at::Tensor> buf{src_flat->narrow(0, c.src[0].offset, c.elements)};
      direct_work.push_back(group->send(buf, static_cast<int>(p), kDirectTag));
      direct_bufs.push_back(std::move(buf));
    }
  }

  for (; posted < slots; ++posted) in_flight.push_back(post(posted));

  // Local pieces, while the above is on the wire.
  for (const Chunk& c : local_chunks) {
    if (contiguous(c.src)) {  // unpack straight from the source (its stores bypass the cache)
      unpack(dst, src_flat->narrow(0, c.src[0].offset, c.elements), c, eta);
    } else if (in_place && contiguous(c.dst)) {  // pack straight into the destination
      at::Tensor target = dst.narrow(0, c.dst[0].offset, c.elements);
      pack(*src_flat, c, target);
    } else {
      unpack(dst, pack(*src_flat, c, local_stage), c, eta);
    }
  }

  for (size_t r = 0; r < rounds; ++r) {
    finish(in_flight.front(), r);
    in_flight.pop_front();
    if (posted < rounds) in_flight.push_back(post(posted++));
  }
  for (auto& work : direct_work) work->wait();
  return staged_elements * any.element_size();
}

}  // namespace

// CompositeExplicitAutograd: one implementation for every device; the pack and
// unpack ops it calls dispatch to the CPU or CUDA kernels.
TORCH_LIBRARY_IMPL(real_ext, CompositeExplicitAutograd, m) { m.impl("realloc_execute", &realloc_execute); }

}  // namespace real_ext::realloc
