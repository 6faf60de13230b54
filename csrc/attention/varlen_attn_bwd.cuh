// Backward kernel of packed (varlen) causal attention on tensor cores, FlashAttention-2
// style: one CTA per (kBlockN-key tile, kv head, d-part, sequence) loops over every q head
// of its GQA group and every q tile that sees the key tile; dK and dV stay in registers
// (no atomics, written once), dQ is accumulated in float32 with atomics.
//
// The warps form a kWarpsN x kWarpsM grid. Warp (wk, wq) computes the transposed score
// tile S^T = K Q^T (and dP^T = V dO^T) for its 32 keys x the wq-th slice of kBlockM /
// kWarpsM queries, so P^T and dS^T come out of the accumulators in the A-operand layout
// of dV += P^T dO and dK += dS^T Q. The same warp owns dK/dV for its 32 keys x the wq-th
// slice of the head dims: the k-chunks of its own query slice come from its registers,
// the other slices' P^T / dS^T from shared memory (sP, sdS). dQ += dS K is split by
// (kBlockM / kDqWarpsM q rows) x (dims) and reads dS^T from sdS.
//
// Head dims above 128 are split into kDSplit parts of kHDV columns: every part
// recomputes S and dP over the full head dim but accumulates dK, dV, dQ only for its own
// columns, which keeps each of the dK/dV accumulators at <= 32 x 64 floats per warp.
// Included only by varlen_attn_bwd_hd*_kernel.cu, which instantiate launch_bwd_tc.
#pragma once

#include <math_constants.h>

#include "attention/varlen_attn_mma.cuh"

namespace real_ext {
namespace attn {

// kBlockM: q rows per iteration; kWarpsM: warps across the queries of S^T (and across the
// dims of dK/dV); kDqWarpsM: warps across the q rows of dQ. Every warp owns 32 keys.
template <int BlockM, int NWarps, int WarpsM, int DqWarpsM, int DSplit>
struct BwdShape {
  static constexpr int kBlockM = BlockM, kNWarps = NWarps, kWarpsM = WarpsM, kDqWarpsM = DqWarpsM, kDSplit = DSplit;
};
template <int kHD>
struct BwdConfig;
//                                       kBlockM kNWarps kWarpsM kDqWarpsM kDSplit
template <> struct BwdConfig<32>  : BwdShape<64,     8,      2,      4,        1> {};
template <> struct BwdConfig<64>  : BwdShape<128,    8,      2,      4,        1> {};
template <> struct BwdConfig<96>  : BwdShape<64,     8,      2,      4,        1> {};
template <> struct BwdConfig<128> : BwdShape<64,     8,      2,      2,        1> {};
template <> struct BwdConfig<192> : BwdShape<64,     4,      2,      2,        2> {};
template <> struct BwdConfig<256> : BwdShape<32,     4,      2,      1,        2> {};

template <typename T, int kHD>
struct BwdTraits {
  using C = BwdConfig<kHD>;
  static constexpr int kBlockM = C::kBlockM, kNWarps = C::kNWarps, kDSplit = C::kDSplit;
  static constexpr int kWarpsM = C::kWarpsM, kWarpsN = kNWarps / kWarpsM;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kWarpKeys = 32;
  static constexpr int kBlockN = kWarpsN * kWarpKeys;  // keys per CTA
  static constexpr int kHDV = kHD / kDSplit;           // dK/dV/dQ columns owned by a CTA
  static constexpr int kWarpQ = kBlockM / kWarpsM;     // queries of a warp's S^T slice
  static constexpr int kWarpDims = kHDV / kWarpsM;     // dK/dV columns of a warp
  static constexpr int kDqWarpsM = C::kDqWarpsM, kDqWarpsN = kNWarps / kDqWarpsM;
  static constexpr int kDqRows = kBlockM / kDqWarpsM;
  static constexpr int kDqCols = kHDV / kDqWarpsN;
  static constexpr int kStride = padded_stride<kHD>();
  static constexpr int kSdsStride = kBlockM + 8;  // same padding argument as padded_stride
  // sK, sV: kBlockN rows; sQ: 2 buffers of kBlockM rows; sdO: kBlockM rows; sP, sdS:
  // kBlockN x kBlockM (P^T, dS^T); then float sLse[2][kBlockM], sD[2][kBlockM].
  static constexpr int kSmemElems = (2 * kBlockN + 3 * kBlockM) * kStride + 2 * kBlockN * kSdsStride;
  static constexpr int kSmemBytes = kSmemElems * static_cast<int>(sizeof(T)) + 4 * kBlockM * 4;
  static_assert(kHD % kDSplit == 0 && kNWarps % kWarpsM == 0 && kNWarps % kDqWarpsM == 0, "");
  static_assert(kWarpQ % 16 == 0 && kWarpDims % 16 == 0 && kDqRows % 16 == 0 && kDqCols % 16 == 0, "");
  static_assert(kBlockM <= kThreads && kBlockN % kNWarps == 0, "");
  static_assert(kSmemBytes <= 166912, "must fit sm80's 163 KB opt-in shared memory");
};

// acc[mt][nt] += A B^T over kK columns, both operands row-major in smem (row stride
// kStride elements): A = kMT*16 rows (M), B = kNT*8 rows (N). a_lane / b_lane: this
// lane's A-style / B-style ldmatrix byte address of the first 16x16 block of each.
template <typename Ops, int kMT, int kNT, int kK, int kStride, int kElem>
__device__ __forceinline__ void gemm_rows_rows(float (&acc)[kMT][kNT][4], uint32_t a_lane, uint32_t b_lane) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) ldsm_x4(a[mt], a_lane + (mt * 16 * kStride + kk * 16) * kElem);
#pragma unroll
    for (int nt2 = 0; nt2 < kNT / 2; ++nt2) {
      uint32_t b[4];
      ldsm_x4(b, b_lane + (nt2 * 16 * kStride + kk * 16) * kElem);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        Ops::mma(acc[mt][2 * nt2], a[mt], b[0], b[1]);
        Ops::mma(acc[mt][2 * nt2 + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// acc[mt][nt] += A[mt] B over one k16 chunk: A fragments given; B = 16 rows (k) x kNT*8
// columns (n) of a row-major smem tile, read with ldmatrix.trans from b_lane, this lane's
// A-style byte address of the chunk's first 16x16 block.
template <typename Ops, int kMT, int kNT, int kElem>
__device__ __forceinline__ void mma_chunk_bt(float (&acc)[kMT][kNT][4], const uint32_t (&a)[kMT][4],
                                             uint32_t b_lane) {
#pragma unroll
  for (int nt2 = 0; nt2 < kNT / 2; ++nt2) {
    uint32_t b[4];
    ldsm_x4_trans(b, b_lane + nt2 * 16 * kElem);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      Ops::mma(acc[mt][2 * nt2], a[mt], b[0], b[1]);
      Ops::mma(acc[mt][2 * nt2 + 1], a[mt], b[2], b[3]);
    }
  }
}

// Iteration over (q head, q tile), with one Q and one dO buffer in use:
//   wait(Q, lse, D [buf], dO); sync A; issue Q, lse, D [buf^1] of the next tile
//   S^T, P^T; dP^T, dS^T; write sP, sdS; sync B
//   dV += P^T dO; sync C; issue dO of the next tile   (overlaps dK and dQ)
//   dK += dS^T Q; dQ += dS K (atomics)
// A also tells that every warp is done with sP, sdS, sQ/sLse/sD[buf^1] of the previous
// iteration; C that every warp is done reading sdO.
template <typename T, int kHD>
__global__ void __launch_bounds__(BwdTraits<T, kHD>::kThreads)
    varlen_bwd_kernel(const VarlenAttnBwdParams p, const BwdWorkspace ws) {
  using Tr = BwdTraits<T, kHD>;
  using Ops = TypeOps<T>;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kThreads = Tr::kThreads, kWarpsM = Tr::kWarpsM;
  constexpr int kHDV = Tr::kHDV, kStride = Tr::kStride, kSdsStride = Tr::kSdsStride;
  constexpr int kWarpQ = Tr::kWarpQ, kDqRows = Tr::kDqRows, kDqCols = Tr::kDqCols;
  constexpr int kElem = static_cast<int>(sizeof(T));
  constexpr int kMT = Tr::kWarpKeys / 16;  // m16 tiles (keys) of a warp
  constexpr int kQN = kWarpQ / 8;          // n8 tiles (queries) of a warp's S^T
  constexpr int kQK = kWarpQ / 16;         // k16 chunks of a warp's query slice
  constexpr int kDN = Tr::kWarpDims / 8;   // n8 tiles (dims) of a warp's dK / dV
  constexpr int kDqMT = kDqRows / 16;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBlockN * kStride;
  T* sQ = sV + kBlockN * kStride;        // [2][kBlockM][kStride]
  T* sdO = sQ + 2 * kBlockM * kStride;   // [kBlockM][kStride]
  T* sP = sdO + kBlockM * kStride;       // [kBlockN][kSdsStride]: P^T, keys x queries
  T* sdS = sP + kBlockN * kSdsStride;    // [kBlockN][kSdsStride]: dS^T
  float* sLse = reinterpret_cast<float*>(sdS + kBlockN * kSdsStride);  // [2][kBlockM]
  float* sD = sLse + 2 * kBlockM;                                        // [2][kBlockM]

  const int n_block = blockIdx.x;
  const int hkv = blockIdx.y / Tr::kDSplit;
  const int d_off = (blockIdx.y % Tr::kDSplit) * kHDV;
  const int b = blockIdx.z;
  const int k_start = p.cu_seqlens_k[b];
  const int len_k = p.cu_seqlens_k[b + 1] - k_start;
  const int n0 = n_block * kBlockN;
  if (n0 >= len_k) return;
  const int q_start = p.cu_seqlens_q[b];
  const int len_q = p.cu_seqlens_q[b + 1] - q_start;
  const int off = len_k - len_q;  // query i sees key j iff j <= i + off (causal)
  const int group = p.heads_q / p.heads_kv;
  const int hd = p.head_dim;
  const int rows_k = min(kBlockN, len_k - n0);

  // q tiles that see at least one key of this tile: query i >= n0 - off (causal).
  const int m_begin = p.causal ? max(0, n0 - off) : 0;
  const int m_block_min = m_begin / kBlockM;
  const int m_block_end = m_begin < len_q ? ceil_div(len_q, kBlockM) : m_block_min;
  // Iterations run over (q head of the group) x (q tile in [m_block_min, m_block_end)),
  // q tile fastest; none when no query sees this key tile.

  const int q_rs = p.heads_q * hd;  // row strides (elements)
  const int k_rs = p.heads_kv * hd;
  const T* gK = static_cast<const T*>(p.k) + static_cast<int64_t>(k_start + n0) * k_rs + static_cast<int64_t>(hkv) * hd;
  const T* gV = static_cast<const T*>(p.v) + static_cast<int64_t>(k_start + n0) * k_rs + static_cast<int64_t>(hkv) * hd;

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wq = warp % kWarpsM;                    // query slice of S^T, dim slice of dK/dV
  const int kb = (warp / kWarpsM) * Tr::kWarpKeys;  // this warp's first key in the tile
  const int qb = wq * kWarpQ;                       // its first query (S^T), in the tile
  const int db = d_off + wq * Tr::kWarpDims;        // its first dK/dV column, in the head dim
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_col = ((lane >> 3) & 1) * 8;

  auto q_offset = [&](int h, int m_block) {
    return static_cast<int64_t>(q_start + m_block * kBlockM) * q_rs + static_cast<int64_t>(h) * hd;
  };
  // Issue the copies of Q, lse, D of q tile m_block of q head h into buffer `buf`.
  auto load_q = [&](int h, int m_block, int buf) {
    const int m0 = m_block * kBlockM;
    load_tile_async<T, kBlockM, kHD, kStride, kThreads>(sQ + buf * kBlockM * kStride,
                                                         static_cast<const T*>(p.q) + q_offset(h, m_block), q_rs,
                                                         len_q - m0, hd, tid);
    if (tid < kBlockM) {
      const bool ok = m0 + tid < len_q;
      const int64_t row = static_cast<int64_t>(h) * p.total_q + q_start + (ok ? m0 + tid : 0);
      cp_async_4(smem_u32(sLse + buf * kBlockM + tid), ws.lse_log2 + row, ok);
      cp_async_4(smem_u32(sD + buf * kBlockM + tid), ws.dsum + row, ok);
    }
  };
  auto load_do = [&](int h, int m_block) {
    load_tile_async<T, kBlockM, kHD, kStride, kThreads>(sdO, static_cast<const T*>(p.dout) + q_offset(h, m_block),
                                                         q_rs, len_q - m_block * kBlockM, hd, tid);
  };

  load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sK, gK, k_rs, rows_k, hd, tid);
  load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sV, gV, k_rs, rows_k, hd, tid);
  const bool any_iter = m_block_min < m_block_end;
  if (any_iter) {
    load_q(hkv * group, m_block_min, 0);
    load_do(hkv * group, m_block_min);
  }
  cp_async_commit();

  float acc_dk[kMT][kDN][4], acc_dv[kMT][kDN][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int dn = 0; dn < kDN; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc_dk[mt][dn][e] = 0.f;
        acc_dv[mt][dn][e] = 0.f;
      }
  const float scale_log2 = p.scale * kLog2e;
  const uint32_t sK_a = smem_u32(sK), sV_a = smem_u32(sV), sdO_a = smem_u32(sdO);
  const uint32_t sP_a = smem_u32(sP), sdS_a = smem_u32(sdS);

  // acc += (P^T or dS^T of this warp's keys) x (dO or Q)[:, db:] over the kBlockM queries:
  // the own slice's A fragments from registers, the other slices' from sA (P^T / dS^T).
  // B rows = k (queries), cols = n (dims): .trans, A-style.
  auto dkv_update = [&](float (&acc)[kMT][kDN][4], const uint32_t (&own)[kQK][kMT][4], uint32_t sA_a,
                        uint32_t sB_a) {
    const uint32_t b_lane = sB_a + (a_row * kStride + db + a_col) * kElem;
#pragma unroll
    for (int kc = 0; kc < kQK; ++kc)
      mma_chunk_bt<Ops, kMT, kDN, kElem>(acc, own[kc], b_lane + (qb + kc * 16) * kStride * kElem);
#pragma unroll
    for (int i = 1; i < kWarpsM; ++i) {
      const int q0 = ((wq + i) % kWarpsM) * kWarpQ;
#pragma unroll
      for (int kc = 0; kc < kQK; ++kc) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
          ldsm_x4(a[mt], sA_a + ((kb + mt * 16 + a_row) * kSdsStride + q0 + kc * 16 + a_col) * kElem);
        mma_chunk_bt<Ops, kMT, kDN, kElem>(acc, a, b_lane + (q0 + kc * 16) * kStride * kElem);
      }
    }
  };

  const int h_end = any_iter ? (hkv + 1) * group : hkv * group;
  int buf = 0;
  for (int h = hkv * group, m_block = m_block_min; h < h_end; buf ^= 1) {
    const int m0 = m_block * kBlockM;
    // The next (head, q tile).
    int h_next = h, m_block_next = m_block + 1;
    if (m_block_next == m_block_end) {
      m_block_next = m_block_min;
      ++h_next;
    }
    const bool has_next = h_next < h_end;
    cp_async_wait_all();
    __syncthreads();  // A
    if (has_next) load_q(h_next, m_block_next, buf ^ 1);
    cp_async_commit();

    const uint32_t sQ_a = smem_u32(sQ + buf * kBlockM * kStride);
    const float* lse_b = sLse + buf * kBlockM + qb;
    const float* d_b = sD + buf * kBlockM + qb;

    // S^T = K Q^T, dP^T = V dO^T (32 keys x kWarpQ queries per warp): A = K / V rows of
    // this warp (non-trans, A-style), B = Q / dO rows of its query slice (non-trans,
    // B-style).
    float s[kMT][kQN][4], dp[kMT][kQN][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kQN; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][nt][e] = 0.f;
          dp[mt][nt][e] = 0.f;
        }
    const uint32_t a_lane = ((kb + a_row) * kStride + a_col) * kElem;
    const uint32_t b_lane = ((qb + b_row) * kStride + b_col) * kElem;
    gemm_rows_rows<Ops, kMT, kQN, kHD, kStride, kElem>(s, sK_a + a_lane, sQ_a + b_lane);

    // P^T = exp2(S^T * scale*log2e - lse*log2e). Masked entries (key past len_k, query past
    // len_q, causal) get exponent -inf (after the scaling, so any scale is fine), so P = 0;
    // lse_log2 is +inf for rows that see no key, so their P is 0 too (never -inf - -inf).
#pragma unroll
    for (int nt = 0; nt < kQN; ++nt) {
      const float2 lse = *reinterpret_cast<const float2*>(lse_b + nt * 8 + 2 * t);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = s[mt][nt][e] * scale_log2 - ((e & 1) ? lse.y : lse.x);
    }
    if (n0 + kBlockN > len_k || m0 + kBlockM > len_q || (p.causal && n0 + kBlockN - 1 > m0 + off)) {
      // Key `key` keeps the queries q in [max(0, key - off) (causal), len_q), none if
      // key >= len_k; as columns relative to this thread's first column m0 + qb + 2t.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int key = n0 + kb + mt * 16 + g + r * 8;
          const int lo = p.causal ? key - off - m0 - qb - 2 * t : -kBlockM;
          const int hi = (key < len_k ? len_q - m0 - qb : 0) - 2 * t;
#pragma unroll
          for (int nt = 0; nt < kQN; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int col = nt * 8 + c;
              if (col < lo || col >= hi) s[mt][nt][2 * r + c] = -CUDART_INF_F;
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kQN; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = fast_exp2(s[mt][nt][e]);

    gemm_rows_rows<Ops, kMT, kQN, kHD, kStride, kElem>(dp, sV_a + a_lane, sdO_a + b_lane);
    // dS^T = P^T * (dP^T - D).
#pragma unroll
    for (int nt = 0; nt < kQN; ++nt) {
      const float2 d = *reinterpret_cast<const float2*>(d_b + nt * 8 + 2 * t);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[mt][nt][e] = s[mt][nt][e] * (dp[mt][nt][e] - ((e & 1) ? d.y : d.x));
    }

    // Pack P^T and dS^T: A fragments of the own query slice (rows = keys, k = queries
    // 16kc..16kc+15: a0/a1 = n8 tile 2kc rows g/g+8, a2/a3 = tile 2kc+1), and the same
    // words to sP / sdS (rows = keys, cols = queries).
    uint32_t p_own[kQK][kMT][4], ds_own[kQK][kMT][4];
#pragma unroll
    for (int kc = 0; kc < kQK; ++kc)
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int nt = 2 * kc + hf;
            p_own[kc][mt][2 * hf + r] = Ops::pack(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]);
            ds_own[kc][mt][2 * hf + r] = Ops::pack(dp[mt][nt][2 * r], dp[mt][nt][2 * r + 1]);
            const uint32_t o = ((kb + mt * 16 + g + r * 8) * kSdsStride + qb + nt * 8 + 2 * t) * kElem;
            st_shared_b32(sP_a + o, p_own[kc][mt][2 * hf + r]);
            st_shared_b32(sdS_a + o, ds_own[kc][mt][2 * hf + r]);
          }
    __syncthreads();  // B: sP, sdS complete

    dkv_update(acc_dv, p_own, sP_a, sdO_a);
    __syncthreads();  // C: every warp is done with sdO
    if (has_next) load_do(h_next, m_block_next);
    cp_async_commit();
    dkv_update(acc_dk, ds_own, sdS_a, sQ_a);

    // dQ[kDqRows rows wm, kDqCols dims wn] += dS K. A = dS (rows = queries, k = keys) from
    // dS^T in smem: .trans, B-style. B from K rows = k (keys), cols = n (dims): .trans,
    // A-style.
    {
      const int wm = warp % Tr::kDqWarpsM, wn = warp / Tr::kDqWarpsM;
      const int qm0 = wm * kDqRows;
      const int dcol0 = d_off + wn * kDqCols;
      float acc_dq[kDqMT][kDqCols / 8][4];
#pragma unroll
      for (int mt = 0; mt < kDqMT; ++mt)
#pragma unroll
        for (int dn = 0; dn < kDqCols / 8; ++dn)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_dq[mt][dn][e] = 0.f;
      const uint32_t ds_lane = sdS_a + (b_row * kSdsStride + qm0 + b_col) * kElem;
      const uint32_t k_lane = sK_a + (a_row * kStride + dcol0 + a_col) * kElem;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[kDqMT][4];
#pragma unroll
        for (int mt = 0; mt < kDqMT; ++mt) ldsm_x4_trans(a[mt], ds_lane + (kk * 16 * kSdsStride + mt * 16) * kElem);
        mma_chunk_bt<Ops, kDqMT, kDqCols / 8, kElem>(acc_dq, a, k_lane + kk * 16 * kStride * kElem);
      }
      // One opaque pointer per iteration: otherwise the optimizer hoists a 64-bit pointer
      // per (row, dim tile) out of the loop and runs out of registers.
      float* gdq = opaque_ptr(ws.dq_accum + static_cast<int64_t>(q_start + m0 + qm0 + g) * q_rs +
                              static_cast<int64_t>(h) * hd + dcol0 + 2 * t);
#pragma unroll
      for (int mt = 0; mt < kDqMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (m0 + qm0 + mt * 16 + g + r * 8 < len_q) {
            float* dst_row = gdq + (mt * 16 + r * 8) * q_rs;
#pragma unroll
            for (int dn = 0; dn < kDqCols / 8; ++dn) {
              // Column dcol0 + dn*8 + 2t is even and head_dim a multiple of 8: the pair is
              // either fully inside head_dim or fully outside.
              if (dcol0 + dn * 8 + 2 * t < hd) {
                float* dst = dst_row + dn * 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                atomicAdd(reinterpret_cast<float2*>(dst),
                          make_float2(acc_dq[mt][dn][2 * r], acc_dq[mt][dn][2 * r + 1]));
#else
                atomicAdd(dst, acc_dq[mt][dn][2 * r]);
                atomicAdd(dst + 1, acc_dq[mt][dn][2 * r + 1]);
#endif
              }
            }
          }
        }
    }
    h = h_next;
    m_block = m_block_next;
  }

  // Epilogue: each warp stages its dK (times scale) / dV block in sK / sV (same rows, columns
  // relative to d_off), then every warp stores kBlockN / kNWarps whole rows with 16-byte
  // stores. Every warp must be done with sK (dQ) first; with no iteration the K/V copies
  // may still be in flight. A tile no query sees writes zeros.
  cp_async_wait_all();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = kb + mt * 16 + g + r * 8;
#pragma unroll
      for (int dn = 0; dn < kDN; ++dn) {
        const uint32_t o = (row * kStride + db - d_off + dn * 8 + 2 * t) * kElem;
        st_shared_b32(sK_a + o, Ops::pack(acc_dk[mt][dn][2 * r] * p.scale, acc_dk[mt][dn][2 * r + 1] * p.scale));
        st_shared_b32(sV_a + o, Ops::pack(acc_dv[mt][dn][2 * r], acc_dv[mt][dn][2 * r + 1]));
      }
    }
  __syncthreads();  // rows are staged by kWarpsM warps
  // Re-read the sequence start instead of keeping it (and its 64-bit products) live
  // through the main loop, where registers are short.
  constexpr int kRowsOut = kBlockN / Tr::kNWarps;
  const int r0 = warp * kRowsOut;
  const int k_start_e = ld_volatile(p.cu_seqlens_k + b);
  const int64_t g_off =
      static_cast<int64_t>(k_start_e + n0 + r0) * (p.heads_kv * p.head_dim) + hkv * p.head_dim + d_off;
  store_rows_warp<T, kHDV, kStride>(static_cast<T*>(p.dk) + g_off, k_rs, sK + r0 * kStride, kRowsOut, rows_k - r0,
                                    hd - d_off, lane);
  store_rows_warp<T, kHDV, kStride>(static_cast<T*>(p.dv) + g_off, k_rs, sV + r0 * kStride, kRowsOut, rows_k - r0,
                                    hd - d_off, lane);
}

template <typename T, int kHD>
cudaError_t launch_bwd_tc(const VarlenAttnBwdParams& p, const BwdWorkspace& ws, cudaStream_t stream) {
  using Tr = BwdTraits<T, kHD>;
  auto kernel = varlen_bwd_kernel<T, kHD>;
  constexpr int smem = Tr::kSmemBytes;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(ceil_div(p.max_seqlen_k, Tr::kBlockN), p.heads_kv * Tr::kDSplit, p.batch);
  kernel<<<grid, Tr::kThreads, smem, stream>>>(p, ws);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace real_ext
