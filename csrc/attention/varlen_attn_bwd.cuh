// Backward kernel of packed (varlen) causal attention on tensor cores, FlashAttention-2
// style: one CTA per (kBlockN-key tile, kv head, d-part, sequence) loops over every q head
// of its GQA group and every q tile that sees the key tile; dK and dV stay in registers
// (no atomics, written once), dQ is accumulated in float32 with atomics.
//
// Each warp owns 16 keys and computes the transposed score tile S^T = K Q^T (keys x
// queries), so P^T and dS^T come out of the accumulators already in the A-operand
// layout of dV += P^T dO and dK += dS^T Q. dS^T also goes to shared memory for
// dQ += dS K, which the warps split by (16 q rows) x (kDqCols dims).
//
// Head dims above 128 are split into kDSplit parts of kHDV columns: every part
// recomputes S and dP over the full head dim but accumulates dK, dV, dQ only for its own
// columns, which keeps the dK/dV accumulators at <= 16 x 128 floats per warp.
// Included only by varlen_attn_bwd_hd*_kernel.cu, which instantiate launch_bwd_tc.
#pragma once

#include <math_constants.h>

#include "attention/varlen_attn_mma.cuh"

namespace real_ext {
namespace attn {

template <int kHD>
struct BwdConfig;
template <> struct BwdConfig<32>  { static constexpr int kBlockM = 64, kNWarps = 8, kDSplit = 1; };
template <> struct BwdConfig<64>  { static constexpr int kBlockM = 64, kNWarps = 8, kDSplit = 1; };
template <> struct BwdConfig<96>  { static constexpr int kBlockM = 64, kNWarps = 8, kDSplit = 1; };
template <> struct BwdConfig<128> { static constexpr int kBlockM = 64, kNWarps = 8, kDSplit = 1; };
template <> struct BwdConfig<192> { static constexpr int kBlockM = 64, kNWarps = 4, kDSplit = 2; };
template <> struct BwdConfig<256> { static constexpr int kBlockM = 32, kNWarps = 4, kDSplit = 2; };

template <typename T, int kHD>
struct BwdTraits {
  static constexpr int kBlockM = BwdConfig<kHD>::kBlockM;  // q rows per iteration
  static constexpr int kNWarps = BwdConfig<kHD>::kNWarps;
  static constexpr int kDSplit = BwdConfig<kHD>::kDSplit;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kBlockN = 16 * kNWarps;  // keys per CTA, 16 per warp
  static constexpr int kHDV = kHD / kDSplit;    // dK/dV/dQ columns owned by a CTA
  static constexpr int kStride = padded_stride<kHD>();
  static constexpr int kSdsStride = kBlockM + 8;  // same padding argument as padded_stride
  static constexpr int kDqWarpsM = kBlockM / 16;
  static constexpr int kDqWarpsN = kNWarps / kDqWarpsM;
  static constexpr int kDqCols = kHDV / kDqWarpsN;
  // sK, sV: kBlockN rows; sQ, sdO: 2 buffers of kBlockM rows; sdS: kBlockN x kBlockM;
  // then float sLse[2][kBlockM], sD[2][kBlockM].
  static constexpr int kSmemElems = (2 * kBlockN + 4 * kBlockM) * kStride + kBlockN * kSdsStride;
  static constexpr int kSmemBytes = kSmemElems * static_cast<int>(sizeof(T)) + 4 * kBlockM * 4;
  static_assert(kHD % kDSplit == 0 && kHDV % 16 == 0, "");
  static_assert(kBlockM % 16 == 0 && kBlockM <= kThreads, "");
  static_assert(kDqWarpsM <= kNWarps && kNWarps % kDqWarpsM == 0 && kDqCols % 16 == 0, "");
  static_assert(kSmemBytes <= 166912, "must fit sm80's 163 KB opt-in shared memory");
};

template <typename T, int kHD>
__global__ void __launch_bounds__(BwdTraits<T, kHD>::kThreads)
    varlen_bwd_kernel(const VarlenAttnBwdParams p, const BwdWorkspace ws) {
  using Tr = BwdTraits<T, kHD>;
  using Ops = TypeOps<T>;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kThreads = Tr::kThreads;
  constexpr int kHDV = Tr::kHDV, kStride = Tr::kStride, kSdsStride = Tr::kSdsStride;
  constexpr int kDqCols = Tr::kDqCols;
  constexpr int kMN = kBlockM / 8;  // n8 tiles (queries) of S^T per warp
  constexpr int kVN = kHDV / 8;     // n8 tiles (dims) of dK / dV per warp

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBlockN * kStride;
  T* sQ = sV + kBlockN * kStride;      // [2][kBlockM][kStride]
  T* sdO = sQ + 2 * kBlockM * kStride;  // [2][kBlockM][kStride]
  T* sdS = sdO + 2 * kBlockM * kStride;  // [kBlockN][kSdsStride]: dS^T, keys x queries
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
  const int kw0 = warp * 16;  // this warp's first key in the tile
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_col = ((lane >> 3) & 1) * 8;

  // Issue the copies of q tile m_block of q head h (Q, dO, lse, D) into buffer `buf`.
  auto load_q_tile = [&](int h, int m_block, int buf) {
    const int m0 = m_block * kBlockM;
    const int64_t q_off = static_cast<int64_t>(q_start + m0) * q_rs + static_cast<int64_t>(h) * hd;
    load_tile_async<T, kBlockM, kHD, kStride, kThreads>(sQ + buf * kBlockM * kStride,
                                                         static_cast<const T*>(p.q) + q_off, q_rs, len_q - m0, hd,
                                                         tid);
    load_tile_async<T, kBlockM, kHD, kStride, kThreads>(sdO + buf * kBlockM * kStride,
                                                         static_cast<const T*>(p.dout) + q_off, q_rs, len_q - m0,
                                                         hd, tid);
    if (tid < kBlockM) {
      const bool ok = m0 + tid < len_q;
      const int64_t row = static_cast<int64_t>(h) * p.total_q + q_start + (ok ? m0 + tid : 0);
      cp_async_4(smem_u32(sLse + buf * kBlockM + tid), ws.lse_log2 + row, ok);
      cp_async_4(smem_u32(sD + buf * kBlockM + tid), ws.dsum + row, ok);
    }
  };

  load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sK, gK, k_rs, rows_k, hd, tid);
  load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sV, gV, k_rs, rows_k, hd, tid);
  const bool any_iter = m_block_min < m_block_end;
  if (any_iter) load_q_tile(hkv * group, m_block_min, 0);
  cp_async_commit();

  float acc_dk[kVN][4], acc_dv[kVN][4];
#pragma unroll
  for (int dn = 0; dn < kVN; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc_dk[dn][e] = 0.f;
      acc_dv[dn][e] = 0.f;
    }
  const float scale_log2 = p.scale * kLog2e;
  const uint32_t sK_a = smem_u32(sK), sV_a = smem_u32(sV), sdS_a = smem_u32(sdS);

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
    // This tile has landed; every warp is done with the previous iteration (its reads of
    // sdS and, before its mid-iteration sync, of buffer buf^1): both may be rewritten.
    cp_async_wait_all();
    __syncthreads();
    if (h_next < h_end) load_q_tile(h_next, m_block_next, buf ^ 1);
    cp_async_commit();

    const uint32_t sQ_a = smem_u32(sQ + buf * kBlockM * kStride);
    const uint32_t sdO_a = smem_u32(sdO + buf * kBlockM * kStride);
    const float* lse_b = sLse + buf * kBlockM;
    const float* d_b = sD + buf * kBlockM;

    // S^T = K Q^T and dP^T = V dO^T (16 keys x kBlockM queries per warp). A = K / V rows
    // of this warp (non-trans, A-style); B from Q / dO rows = n (queries), cols = k (dims):
    // non-trans, B-style.
    float s[kMN][4], dp[kMN][4];
#pragma unroll
    for (int nt = 0; nt < kMN; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = 0.f;
        dp[nt][e] = 0.f;
      }
#pragma unroll
    for (int kk = 0; kk < kHD / 16; ++kk) {
      uint32_t ak[4], av[4];
      ldsm_x4(ak, sK_a + ((kw0 + a_row) * kStride + kk * 16 + a_col) * sizeof(T));
      ldsm_x4(av, sV_a + ((kw0 + a_row) * kStride + kk * 16 + a_col) * sizeof(T));
#pragma unroll
      for (int nt2 = 0; nt2 < kMN / 2; ++nt2) {
        const uint32_t boff = ((nt2 * 16 + b_row) * kStride + kk * 16 + b_col) * sizeof(T);
        uint32_t bq[4], bo[4];
        ldsm_x4(bq, sQ_a + boff);
        ldsm_x4(bo, sdO_a + boff);
        Ops::mma(s[2 * nt2], ak, bq[0], bq[1]);
        Ops::mma(s[2 * nt2 + 1], ak, bq[2], bq[3]);
        Ops::mma(dp[2 * nt2], av, bo[0], bo[1]);
        Ops::mma(dp[2 * nt2 + 1], av, bo[2], bo[3]);
      }
    }

    // P^T = exp2(S^T * scale*log2e - lse*log2e); dS^T = P^T * (dP^T - D). Masked entries
    // (key past len_k, query past len_q, causal) get P = 0. lse_log2 is +inf for rows that
    // see no key, so their P is 0 too (never -inf - -inf).
#pragma unroll
    for (int nt = 0; nt < kMN; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
    if (n0 + kBlockN > len_k || m0 + kBlockM > len_q || (p.causal && n0 + kBlockN - 1 > m0 + off)) {
      // Key `key` keeps the queries q in [max(0, key - off) (causal), len_q), none if
      // key >= len_k; as tile columns relative to this thread's first column m0 + 2t.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int key = n0 + kw0 + g + r * 8;
        const int lo = p.causal ? key - off - m0 - 2 * t : -kBlockM;
        const int hi = (key < len_k ? len_q - m0 : 0) - 2 * t;
#pragma unroll
        for (int nt = 0; nt < kMN; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int col = nt * 8 + c;
            if (col < lo || col >= hi) s[nt][2 * r + c] = -CUDART_INF_F;
          }
      }
    }
#pragma unroll
    for (int nt = 0; nt < kMN; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = nt * 8 + 2 * t + (e & 1);  // query, in the tile
        const float pr = fast_exp2(s[nt][e] - lse_b[qi]);
        s[nt][e] = pr;
        dp[nt][e] = pr * (dp[nt][e] - d_b[qi]);
      }

    // dS^T -> sdS (rows = keys, cols = queries).
#pragma unroll
    for (int nt = 0; nt < kMN; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        *reinterpret_cast<uint32_t*>(sdS + (kw0 + g + r * 8) * kSdsStride + nt * 8 + 2 * t) =
            Ops::pack(dp[nt][2 * r], dp[nt][2 * r + 1]);

    // dV += P^T dO[:, d_off:], dK += dS^T Q[:, d_off:]. A from the accumulators (rows =
    // keys, k = queries 16kk..16kk+15: a0/a1 = tile 2kk c0c1/c2c3, a2/a3 = tile 2kk+1);
    // B from dO / Q rows = k (queries), cols = n (dims): .trans, A-style.
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      uint32_t ap[4], ads[4];
      ap[0] = Ops::pack(s[2 * kk][0], s[2 * kk][1]);
      ap[1] = Ops::pack(s[2 * kk][2], s[2 * kk][3]);
      ap[2] = Ops::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      ap[3] = Ops::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      ads[0] = Ops::pack(dp[2 * kk][0], dp[2 * kk][1]);
      ads[1] = Ops::pack(dp[2 * kk][2], dp[2 * kk][3]);
      ads[2] = Ops::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
      ads[3] = Ops::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
      for (int dn2 = 0; dn2 < kVN / 2; ++dn2) {
        const uint32_t boff = ((kk * 16 + a_row) * kStride + d_off + dn2 * 16 + a_col) * sizeof(T);
        uint32_t bo[4], bq[4];
        ldsm_x4_trans(bo, sdO_a + boff);
        ldsm_x4_trans(bq, sQ_a + boff);
        Ops::mma(acc_dv[2 * dn2], ap, bo[0], bo[1]);
        Ops::mma(acc_dv[2 * dn2 + 1], ap, bo[2], bo[3]);
        Ops::mma(acc_dk[2 * dn2], ads, bq[0], bq[1]);
        Ops::mma(acc_dk[2 * dn2 + 1], ads, bq[2], bq[3]);
      }
    }
    __syncthreads();  // sdS complete

    // dQ[16 rows wm, kDqCols dims wn] += dS K. A = dS (rows = queries, k = keys) from
    // dS^T in smem: .trans, B-style. B from K rows = k (keys), cols = n (dims): .trans,
    // A-style.
    {
      const int wm = warp % Tr::kDqWarpsM, wn = warp / Tr::kDqWarpsM;
      const int dcol0 = d_off + wn * kDqCols;
      float acc_dq[kDqCols / 8][4];
#pragma unroll
      for (int dn = 0; dn < kDqCols / 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dq[dn][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4_trans(a, sdS_a + ((kk * 16 + b_row) * kSdsStride + wm * 16 + b_col) * sizeof(T));
#pragma unroll
        for (int dn2 = 0; dn2 < kDqCols / 16; ++dn2) {
          uint32_t bk[4];
          ldsm_x4_trans(bk, sK_a + ((kk * 16 + a_row) * kStride + dcol0 + dn2 * 16 + a_col) * sizeof(T));
          Ops::mma(acc_dq[2 * dn2], a, bk[0], bk[1]);
          Ops::mma(acc_dq[2 * dn2 + 1], a, bk[2], bk[3]);
        }
      }
      // One opaque pointer per iteration: otherwise the optimizer hoists a 64-bit pointer
      // per (row, dim tile) out of the loop and runs out of registers.
      float* gdq = opaque_ptr(ws.dq_accum + static_cast<int64_t>(q_start + m0 + wm * 16 + g) * q_rs +
                              static_cast<int64_t>(h) * hd + dcol0 + 2 * t);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (m0 + wm * 16 + g + r * 8 < len_q) {
          float* dst_row = gdq + r * 8 * q_rs;
#pragma unroll
          for (int dn = 0; dn < kDqCols / 8; ++dn) {
            // Column dcol0 + dn*8 + 2t is even and head_dim a multiple of 8: the pair is
            // either fully inside head_dim or fully outside.
            if (dcol0 + dn * 8 + 2 * t < hd) {
              float* dst = dst_row + dn * 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
              atomicAdd(reinterpret_cast<float2*>(dst), make_float2(acc_dq[dn][2 * r], acc_dq[dn][2 * r + 1]));
#else
              atomicAdd(dst, acc_dq[dn][2 * r]);
              atomicAdd(dst + 1, acc_dq[dn][2 * r + 1]);
#endif
            }
          }
        }
      }
    }
    h = h_next;
    m_block = m_block_next;
  }

  // Epilogue: dK (times scale) and dV through this warp's own rows of sK / sV, then
  // 16-byte stores. Every warp must be done with sK (dQ) first; with no iteration the
  // K/V copies may still be in flight. A tile no query sees writes zeros.
  cp_async_wait_all();
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = kw0 + g + r * 8;
#pragma unroll
    for (int dn = 0; dn < kVN; ++dn) {
      const int col = dn * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(sK + row * kStride + col) =
          Ops::pack(acc_dk[dn][2 * r] * p.scale, acc_dk[dn][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(sV + row * kStride + col) =
          Ops::pack(acc_dv[dn][2 * r], acc_dv[dn][2 * r + 1]);
    }
  }
  __syncwarp();
  // Re-read the sequence start instead of keeping it (and its 64-bit products) live
  // through the main loop, where registers are short.
  const int k_start_e = ld_volatile(p.cu_seqlens_k + b);
  const int64_t g_off =
      static_cast<int64_t>(k_start_e + n0 + kw0) * (p.heads_kv * p.head_dim) + hkv * p.head_dim + d_off;
  store_rows_warp<T, kHDV, kStride>(static_cast<T*>(p.dk) + g_off, k_rs, sK + kw0 * kStride, 16, rows_k - kw0,
                                    hd - d_off, lane);
  store_rows_warp<T, kHDV, kStride>(static_cast<T*>(p.dv) + g_off, k_rs, sV + kw0 * kStride, 16, rows_k - kw0,
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
