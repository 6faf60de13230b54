// Carries out a reallocation plan on one rank over a c10d ProcessGroup (gloo on
// CPU, NCCL on GPU: the same code). Order of work, identical on every rank:
//   1. pieces this rank already holds: pack + unpack locally;
//   2. steps k = 1 .. size-1: send to (rank + k) % size, receive from
//      (rank - k) % size, so every step pairs each sender with one receiver and
//      no two ranks can wait on each other.
// Each peer message is cut into chunks of at most max_buffer_bytes / 3 (two
// send buffers, so the next chunk is packed while the last one is on the wire,
// and one receive buffer, all allocated once), the cut computed identically by
// sender and receiver.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/library.h>

#include <algorithm>
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

// Cuts the transfers (in plan order) into chunks of at most cap elements.
std::vector<Chunk> make_chunks(const std::vector<const Transfer*>& transfers, int64_t cap) {
  std::vector<Chunk> chunks(1);
  auto room = [&] { return cap - chunks.back().elements; };
  for (const Transfer* t : transfers) {
    const Box& b = t->box;
    for (int64_t r = b.r0; r < b.r1;) {
      if (room() == 0) chunks.emplace_back();
      if (b.cols() <= room()) {  // whole rows fit
        const int64_t rows = std::min(b.r1 - r, room() / b.cols());
        const int64_t dr = r - b.r0;
        Chunk& c = chunks.back();
        c.src.push_back({t->src_offset + dr * t->src_ld, t->src_ld, rows, b.cols(), c.elements});
        c.dst.push_back({t->dst_offset + dr * t->dst_ld, t->dst_ld, rows, b.cols(), c.elements});
        c.elements += rows * b.cols();
        r += rows;
      } else {  // one row is wider than a chunk: send it in column pieces
        for (int64_t col = 0; col < b.cols();) {
          if (room() == 0) chunks.emplace_back();
          const int64_t cols = std::min(b.cols() - col, room());
          const int64_t dr = r - b.r0;
          Chunk& c = chunks.back();
          c.src.push_back({t->src_offset + dr * t->src_ld + col, t->src_ld, 1, cols, c.elements});
          c.dst.push_back({t->dst_offset + dr * t->dst_ld + col, t->dst_ld, 1, cols, c.elements});
          c.elements += cols;
          col += cols;
        }
        r += 1;
      }
    }
  }
  if (chunks.back().elements == 0) chunks.pop_back();
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

void unpack(at::Tensor& flat, const at::Tensor& buffer, const Chunk& c, double eta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("real_ext::realloc_unpack_", "")
                       .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  op.call(flat, buffer, boxes_tensor(c.dst), eta);
}

void realloc_execute(const at::Tensor& transfers, const std::optional<at::Tensor>& src_flat,
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
  const at::Tensor& any = src_flat.has_value() ? *src_flat : *dst_flat;
  if (!src_flat.has_value() && !dst_flat.has_value()) return;  // nothing to do here
  const int64_t cap = std::max<int64_t>(1, max_buffer_bytes / 3 / any.element_size());
  REAL_EXT_CHECK_VALUE(max_buffer_bytes >= 3 * any.element_size(), "realloc_execute: max_buffer_bytes=",
                       max_buffer_bytes, " is below 3 elements");
  at::Tensor dst = dst_flat.has_value() ? *dst_flat : at::Tensor();

  // Staging memory, allocated once: two send buffers and one receive buffer.
  const at::TensorOptions opts = any.options();
  at::Tensor stage[2] = {at::empty({cap}, opts), at::empty({cap}, opts)};
  at::Tensor recv_stage = at::empty({cap}, opts);

  for (const Chunk& c : make_chunks(local, cap)) unpack(dst, pack(*src_flat, c, stage[0]), c, eta);

  for (int64_t k = 1; k < size; ++k) {
    const int64_t to = (me + k) % size, from = (me - k + size) % size;
    const std::vector<Chunk> send_chunks = make_chunks(out[to], cap);
    const std::vector<Chunk> recv_chunks = make_chunks(in[from], cap);
    const size_t steps = std::max(send_chunks.size(), recv_chunks.size());
    at::Tensor staged[2];
    if (!send_chunks.empty()) staged[0] = pack(*src_flat, send_chunks[0], stage[0]);
    for (size_t i = 0; i < steps; ++i) {
      c10::intrusive_ptr<c10d::Work> recv_work, send_work;
      std::vector<at::Tensor> recv_buf;
      if (i < recv_chunks.size()) {
        recv_buf = {recv_stage.narrow(0, 0, recv_chunks[i].elements)};
        recv_work = group->recv(recv_buf, static_cast<int>(from), 0);
      }
      std::vector<at::Tensor> send_buf;
      if (i < send_chunks.size()) {
        send_buf = {staged[i % 2]};
        send_work = group->send(send_buf, static_cast<int>(to), 0);
        // Pack the next chunk while this one is on the wire.
        if (i + 1 < send_chunks.size())
          staged[(i + 1) % 2] = pack(*src_flat, send_chunks[i + 1], stage[(i + 1) % 2]);
      }
      if (send_work) send_work->wait();
      if (recv_work) {
        recv_work->wait();
        unpack(dst, recv_buf[0], recv_chunks[i], eta);
      }
    }
  }
}

}  // namespace

// CompositeExplicitAutograd: one implementation for every device; the pack and
// unpack ops it calls dispatch to the CPU or CUDA kernels.
TORCH_LIBRARY_IMPL(real_ext, CompositeExplicitAutograd, m) { m.impl("realloc_execute", &realloc_execute); }

}  // namespace real_ext::realloc
