// Forward kernel of packed (varlen) causal attention on tensor cores, FlashAttention-2
// style: one CTA per (kBlockM-row q tile, q head, sequence); each warp owns 16*kMT q rows;
// K/V tiles of kBlockN keys stream through shared memory; S and P stay in registers.
// Included only by varlen_attn_fwd_hd*_kernel.cu, which instantiate launch_fwd_tc.
#pragma once

#include <type_traits>

#include <math_constants.h>

#include "attention/varlen_attn_mma.cuh"

namespace real_ext {
namespace attn {

// Tile shapes per head-dim bucket (FlashAttention-2's sm80/sm90 choices without dropout).
template <int kHD>
struct FwdConfig;
template <> struct FwdConfig<32>  { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdConfig<64>  { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdConfig<96>  { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdConfig<128> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdConfig<192> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 8; };
template <> struct FwdConfig<256> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 8; };

template <typename T, int kHD>
struct FwdTraits {
  static constexpr int kBlockM = FwdConfig<kHD>::kBlockM;
  static constexpr int kBlockN = FwdConfig<kHD>::kBlockN;
  static constexpr int kNWarps = FwdConfig<kHD>::kNWarps;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kMT = kBlockM / (16 * kNWarps);  // m16 row tiles per warp
  static constexpr int kStride = padded_stride<kHD>();
  // sQ (kBlockM rows), sK, sV (kBlockN rows each); one buffer each (see the pipeline).
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kStride * static_cast<int>(sizeof(T));
  static_assert(kMT >= 1 && kMT * 16 * kNWarps == kBlockM, "warps must tile the q rows");
  static_assert(kBlockN % 16 == 0, "");
  static_assert(kSmemBytes <= 166912, "must fit sm80's 163 KB opt-in shared memory");
};

// Pipeline per K/V tile nb (descending, so the masked diagonal tiles come first):
//   wait(K[nb]); sync; issue V[nb]; S = Q K^T; softmax  (overlaps the V copy)
//   wait(V[nb]); sync; issue K[nb-1]; O += P V          (overlaps the next K copy)
// The second sync also tells every warp has finished reading K[nb] before K[nb-1] lands,
// and the first one that every warp has finished P V[nb+1] before V[nb] lands.
template <typename T, int kHD>
__global__ void __launch_bounds__(FwdTraits<T, kHD>::kThreads)
    varlen_fwd_kernel(const VarlenAttnFwdParams p) {
  using Tr = FwdTraits<T, kHD>;
  using Ops = TypeOps<T>;
  constexpr int kBlockM = Tr::kBlockM, kBlockN = Tr::kBlockN, kThreads = Tr::kThreads;
  constexpr int kMT = Tr::kMT, kStride = Tr::kStride;
  constexpr int kNT = kBlockN / 8;  // n8 tiles of S per m16 row tile
  constexpr int kDT = kHD / 8;      // n8 tiles of O

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * kStride;
  T* sV = sK + kBlockN * kStride;

  // Largest q tiles first: they carry the most causal work.
  const int m_block = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q_start = p.cu_seqlens_q[b];
  const int len_q = p.cu_seqlens_q[b + 1] - q_start;
  const int m0 = m_block * kBlockM;
  if (m0 >= len_q) return;
  const int k_start = p.cu_seqlens_k[b];
  const int len_k = p.cu_seqlens_k[b + 1] - k_start;
  const int off = len_k - len_q;  // query i sees key j iff j <= i + off (causal)
  const int hkv = h / (p.heads_q / p.heads_kv);
  const int hd = p.head_dim;
  const int rows_q = min(kBlockM, len_q - m0);

  const int q_rs = p.heads_q * hd;  // row strides (elements)
  const int k_rs = p.heads_kv * hd;
  const T* gQ = static_cast<const T*>(p.q) + static_cast<int64_t>(q_start + m0) * q_rs + static_cast<int64_t>(h) * hd;
  const T* gK = static_cast<const T*>(p.k) + static_cast<int64_t>(k_start) * k_rs + static_cast<int64_t>(hkv) * hd;
  const T* gV = static_cast<const T*>(p.v) + static_cast<int64_t>(k_start) * k_rs + static_cast<int64_t>(hkv) * hd;
  T* gO = static_cast<T*>(p.out) + static_cast<int64_t>(q_start + m0) * q_rs + static_cast<int64_t>(h) * hd;

  int n_blocks = ceil_div(len_k, kBlockN);
  if (p.causal) {
    const int last_key = m0 + rows_q - 1 + off;  // the last real row's last visible key
    n_blocks = min(n_blocks, last_key < 0 ? 0 : last_key / kBlockN + 1);
  }

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wrow0 = warp * 16 * kMT;  // first tile row of this warp
  // ldmatrix lane offsets (see varlen_attn_mma.cuh): A-style and B-style.
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_col = ((lane >> 3) & 1) * 8;

  load_tile_async<T, kBlockM, kHD, kStride, kThreads>(sQ, gQ, q_rs, rows_q, hd, tid);
  if (n_blocks > 0) {
    const int n0 = (n_blocks - 1) * kBlockN;
    load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sK, gK + static_cast<int64_t>(n0) * k_rs, k_rs, len_k - n0, hd, tid);
  }
  cp_async_commit();

  float acc_o[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int dn = 0; dn < kDT; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dn][e] = 0.f;
  // Running max (log2 domain, scale folded in) and this thread's partial row sum, for
  // rows g (r = 0) and g + 8 (r = 1) of each m16 tile.
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[mt][r] = -CUDART_INF_F;
      row_sum[mt][r] = 0.f;
    }
  const float scale_log2 = p.scale * kLog2e;
  const uint32_t sQ_a = smem_u32(sQ), sK_a = smem_u32(sK), sV_a = smem_u32(sV);

  // One K/V tile; kMasked = the tile crosses len_k or (causal) the diagonal.
  auto tile_step = [&](const int nb, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    const int n0 = nb * kBlockN;
    cp_async_wait_all();
    __syncthreads();
    load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sV, gV + static_cast<int64_t>(n0) * k_rs, k_rs, len_k - n0, hd, tid);
    cp_async_commit();

    // S = Q K^T: A = Q rows (non-trans), B from K rows = n, cols = k (non-trans, B-style).
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kHD / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        ldsm_x4(a[mt], sQ_a + ((wrow0 + mt * 16 + a_row) * kStride + kk * 16 + a_col) * sizeof(T));
#pragma unroll
      for (int nt2 = 0; nt2 < kNT / 2; ++nt2) {
        uint32_t bf[4];
        ldsm_x4(bf, sK_a + ((nt2 * 16 + b_row) * kStride + kk * 16 + b_col) * sizeof(T));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Ops::mma(s[mt][2 * nt2], a[mt], bf[0], bf[1]);
          Ops::mma(s[mt][2 * nt2 + 1], a[mt], bf[2], bf[3]);
        }
      }
    }

    // Scale to the log2 domain, then mask keys past len_k and (causal) above the diagonal:
    // row `row` keeps the columns col < min(len_k, row + off + 1). Limits are relative to
    // this thread's first column n0 + 2t.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        int lim = kBlockN;
        if constexpr (kMasked) {
          lim = len_k - n0 - 2 * t;
          if (p.causal) lim = min(lim, m0 + wrow0 + mt * 16 + g + r * 8 + off + 1 - n0 - 2 * t);
        }
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float x = s[mt][nt][2 * r + c] * scale_log2;
            s[mt][nt][2 * r + c] = (!kMasked || nt * 8 + c < lim) ? x : -CUDART_INF_F;
          }
      }

    // Online softmax. A row with nothing visible so far keeps max = -inf; it subtracts 0
    // instead, so exp2(-inf - 0) = 0 and no -inf - (-inf) NaN appears.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mt][r];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = quad_max(mx);
        const float mx_use = mx == -CUDART_INF_F ? 0.f : mx;
        const float corr = fast_exp2(row_max[mt][r] - mx_use);  // 0 when the old max was -inf
        row_max[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          s[mt][nt][2 * r] = fast_exp2(s[mt][nt][2 * r] - mx_use);
          s[mt][nt][2 * r + 1] = fast_exp2(s[mt][nt][2 * r + 1] - mx_use);
          sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
        }
        row_sum[mt][r] = row_sum[mt][r] * corr + sum;
#pragma unroll
        for (int dn = 0; dn < kDT; ++dn) {
          acc_o[mt][dn][2 * r] *= corr;
          acc_o[mt][dn][2 * r + 1] *= corr;
        }
      }

    cp_async_wait_all();
    __syncthreads();
    if (nb > 0) {
      const int n1 = n0 - kBlockN;
      load_tile_async<T, kBlockN, kHD, kStride, kThreads>(sK, gK + static_cast<int64_t>(n1) * k_rs, k_rs, len_k - n1, hd, tid);
    }
    cp_async_commit();

    // O += P V. A = P straight from the S accumulators: for keys 16kk..16kk+15,
    // a0 = S tile 2kk (c0,c1), a1 = tile 2kk (c2,c3), a2 = tile 2kk+1 (c0,c1),
    // a3 = tile 2kk+1 (c2,c3). B from V rows = k (keys), cols = n (dims): .trans, A-style.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        a[mt][0] = Ops::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = Ops::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = Ops::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = Ops::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn2 = 0; dn2 < kDT / 2; ++dn2) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, sV_a + ((kk * 16 + a_row) * kStride + dn2 * 16 + a_col) * sizeof(T));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Ops::mma(acc_o[mt][2 * dn2], a[mt], bf[0], bf[1]);
          Ops::mma(acc_o[mt][2 * dn2 + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
  };

  // Descending: the tiles that need masking come first, then the plain ones.
  int nb = n_blocks - 1;
  for (; nb >= 0 && (nb * kBlockN + kBlockN > len_k || (p.causal && nb * kBlockN + kBlockN - 1 > m0 + off)); --nb)
    tile_step(nb, std::true_type{});
  for (; nb >= 0; --nb) tile_step(nb, std::false_type{});

  // Epilogue. Also covers n_blocks == 0 (nothing visible): out = 0, lse = -inf. The Q
  // copy may still be in flight there, and other threads issued parts of it: wait + sync.
  cp_async_wait_all();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(row_sum[mt][r]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = wrow0 + mt * 16 + g + r * 8;
      if (t == 0 && row < rows_q) {
        p.lse[static_cast<int64_t>(h) * p.total_q + q_start + m0 + row] =
            l > 0.f ? row_max[mt][r] * kLn2 + logf(l) : -CUDART_INF_F;
      }
      // Stage O in this warp's own rows of sQ (only this warp ever read them).
#pragma unroll
      for (int dn = 0; dn < kDT; ++dn) {
        *reinterpret_cast<uint32_t*>(sQ + row * kStride + dn * 8 + 2 * t) =
            Ops::pack(acc_o[mt][dn][2 * r] * inv, acc_o[mt][dn][2 * r + 1] * inv);
      }
    }
  __syncwarp();
  store_rows_warp<T, kHD, kStride>(gO + wrow0 * q_rs, q_rs, sQ + wrow0 * kStride, 16 * kMT, rows_q - wrow0, hd,
                                   lane);
}

template <typename T, int kHD>
cudaError_t launch_fwd_tc(const VarlenAttnFwdParams& p, cudaStream_t stream) {
  using Tr = FwdTraits<T, kHD>;
  auto kernel = varlen_fwd_kernel<T, kHD>;
  constexpr int smem = Tr::kSmemBytes;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(ceil_div(p.max_seqlen_q, Tr::kBlockM), p.heads_q, p.batch);
  kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace real_ext
