#if MEDVISION_HAS_CUDA
#include "model/qwen25vl/cuda_linear.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"

namespace mv::qwen25vl::cudaeng {

namespace {

cuda::ElemType dense_type(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return cuda::ElemType::kF32;
    case WeightFormat::kF16:
      return cuda::ElemType::kF16;
    case WeightFormat::kBF16:
      return cuda::ElemType::kBF16;
    case WeightFormat::kNF4:
      break;
  }
  fail(Errc::kInternal, "linear: {} is not a dense weight format", format_name(f));
}

WeightFormat format_of(DType dt) {
  switch (dt) {
    case DType::kF32:
      return WeightFormat::kF32;
    case DType::kF16:
      return WeightFormat::kF16;
    case DType::kBF16:
      return WeightFormat::kBF16;
    default:
      fail(Errc::kUnsupported, "CUDA engine: weight dtype {} is not supported (F32, F16, BF16 or NF4)",
           dtype_name(dt));
  }
}

void* scratch(const LinearContext& c, std::size_t bytes) {
  MV_CHECK(c.scratch != nullptr, "linear: no scratch buffer");
  c.scratch->ensure(bytes);
  return c.scratch->data();
}

}  // namespace

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kBF16:
      return "bf16";
    case WeightFormat::kF16:
      return "f16";
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kNF4:
      return "nf4";
  }
  return "?";
}

const bf16* DLinear::bf16_rows() const {
  MV_CHECK(format == WeightFormat::kBF16, "weight rows requested as bf16 from a {} weight",
           format_name(format));
  return w.as<bf16>();
}

std::uint64_t DLinear::weight_bytes() const {
  std::uint64_t n = w.size();
  for (const Nf4Part& p : parts) n += p.q.bytes() + p.dense.size();
  return n;
}

namespace {
// An NF4 layer's whole weight (every part at its rows) as bf16 [out, in] at dst.
void dequantize_nf4(const DLinear& l, cudaStream_t s, bf16* dst) {
  for (const Nf4Part& p : l.parts) {
    bf16* d = dst + p.row0 * l.in;
    if (p.dense.size())
      cuda::check(cudaMemcpyAsync(d, p.dense.data(), static_cast<std::size_t>(p.rows * l.in) * sizeof(bf16),
                                  cudaMemcpyDeviceToDevice, s),
                  "linear: copy unquantized part");
    else
      cuda::nf4_dequantize(s, p.ref, d);
  }
}
}  // namespace

void DLinear::gemm(const LinearContext& c, const bf16* a, std::int64_t rows, float* y,
                   bool accumulate) const {
  if (rows <= 0) return;
  const auto n_act = static_cast<std::size_t>(rows * in);
  switch (format) {
    case WeightFormat::kBF16:
      c.gemm->run(c.stream, a, rows, w.as<bf16>(), out, in, bias(), y, accumulate);
      return;
    case WeightFormat::kF16: {
      auto* a16 = static_cast<std::uint16_t*>(scratch(c, n_act * 2));
      cuda::bf16_to_f16(c.stream, a, rows * in, a16);
      c.gemm->run_typed(c.stream, cuda::Gemm::Operands::kF16, a16, rows, w.data(), out, in, bias(), y,
                        accumulate);
      return;
    }
    case WeightFormat::kF32: {
      auto* a32 = static_cast<float*>(scratch(c, n_act * 4));
      cuda::bf16_to_f32(c.stream, a, rows * in, a32);
      c.gemm->run_typed(c.stream, cuda::Gemm::Operands::kF32, a32, rows, w.data(), out, in, bias(), y,
                        accumulate);
      return;
    }
    case WeightFormat::kNF4: {
      const std::int64_t ld = lda();
      if (rows <= kNf4GemvGemmRows) {
        // A decode batch: the fused NF4 GEMM (nf4_gemm_usable), else the fused GEMV over groups of
        // kGemvMaxRows rows, on the widened activations: both read the packed weight once per call, less
        // than writing and reading a bf16 copy.
        const bool fused = nf4_gemm_usable();
        const std::size_t x_bytes = (n_act * 4 + (ld != in ? n_act * 2 : 0) + 255) & ~std::size_t{255};
        auto* x32 = static_cast<float*>(scratch(c, x_bytes + (fused ? nf4_gemm_scratch(rows) : 0)));
        if (ld != in) {  // padded rows (pad_in): drop the padding first
          auto* packed = reinterpret_cast<bf16*>(x32 + n_act);
          cuda::check(cudaMemcpy2DAsync(packed, static_cast<std::size_t>(in) * sizeof(bf16), a,
                                        static_cast<std::size_t>(ld) * sizeof(bf16),
                                        static_cast<std::size_t>(in) * sizeof(bf16),
                                        static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, c.stream),
                      "linear: unpad activations");
          a = packed;
        }
        cuda::bf16_to_f32(c.stream, a, rows * in, x32);
        if (fused && nf4_gemm_parts(c, x32, rows, y, accumulate, {}, x_bytes)) return;
        for (std::int64_t r0 = 0; r0 < rows; r0 += cuda::kGemvMaxRows) {
          const int m = static_cast<int>(std::min<std::int64_t>(cuda::kGemvMaxRows, rows - r0));
          gemv(c, x32 + r0 * in, m, y + r0 * out, accumulate);
        }
        return;
      }
      // Dequantize the whole weight (every part at its rows) to bf16, then one bf16 GEMM (over the padded
      // copy after pad_in).
      const std::size_t wbytes = static_cast<std::size_t>(out * in) * sizeof(bf16);
      const std::size_t pbytes = ld != in ? static_cast<std::size_t>(out * ld) * sizeof(bf16) : 0;
      auto* wb = static_cast<bf16*>(scratch(c, wbytes + pbytes));
      dequantize_nf4(*this, c.stream, wb);
      if (ld != in) {
        auto* padded = reinterpret_cast<bf16*>(reinterpret_cast<char*>(wb) + wbytes);
        cuda::check(cudaMemsetAsync(padded, 0, pbytes, c.stream), "linear: zero the padded weight");
        cuda::check(cudaMemcpy2DAsync(padded, static_cast<std::size_t>(ld) * sizeof(bf16), wb,
                                      static_cast<std::size_t>(in) * sizeof(bf16),
                                      static_cast<std::size_t>(in) * sizeof(bf16),
                                      static_cast<std::size_t>(out), cudaMemcpyDeviceToDevice, c.stream),
                    "linear: pad the dequantized weight");
        wb = padded;
      }
      c.gemm->run(c.stream, a, rows, wb, out, ld, bias(), y, accumulate);
      return;
    }
  }
  fail(Errc::kInternal, "linear: unknown weight format");
}

namespace {
// MV_NF4_GEMM=0 turns the fused NF4 GEMM off (decode batches then dequantize to bf16 as before, one
// sequence runs the NF4 GEMV); MV_NF4_GEMM=2 leaves one sequence to the NF4 GEMV (the fused GEMM from two
// rows on), for comparisons.
int nf4_gemm_mode() {
  static const int mode = [] {
    const char* e = std::getenv("MV_NF4_GEMM");
    if (e == nullptr) return 1;
    if (std::strcmp(e, "0") == 0) return 0;
    return std::strcmp(e, "2") == 0 ? 2 : 1;
  }();
  return mode;
}
}  // namespace

bool DLinear::nf4_gemm_usable() const {
  if (format != WeightFormat::kNF4 || nf4_gemm_mode() == 0 || parts.empty() ||
      parts.size() > static_cast<std::size_t>(cuda::kNf4GemmMaxParts))
    return false;
  for (const Nf4Part& p : parts)
    if (p.dense.size() || !cuda::nf4_gemm_supports(p.ref, in)) return false;
  return true;
}

namespace {
int gemm_parts(const std::vector<Nf4Part>& parts, cuda::Nf4GemmPart* gp) {
  for (std::size_t i = 0; i < parts.size(); ++i) gp[i] = cuda::Nf4GemmPart{parts[i].ref, parts[i].row0, parts[i].rows};
  return static_cast<int>(parts.size());
}
}  // namespace

std::size_t DLinear::nf4_gemm_scratch(std::int64_t rows) const {
  cuda::Nf4GemmPart gp[cuda::kNf4GemmMaxParts];
  const int np = gemm_parts(parts, gp);
  std::size_t most = 0;
  for (std::int64_t r0 = 0; r0 < rows; r0 += cuda::kNf4GemmMaxRows) {
    const int m = static_cast<int>(std::min<std::int64_t>(cuda::kNf4GemmMaxRows, rows - r0));
    most = std::max(most, cuda::nf4_gemm_workspace(m, gp, np, out, in));
  }
  return (most + 255) & ~std::size_t{255};
}

bool DLinear::nf4_gemm_parts(const LinearContext& c, const float* x, std::int64_t rows, float* y, bool accumulate,
                             const cuda::GemvInput& input, std::size_t reserve) const {
  if (!nf4_gemm_usable() || (rows == 1 && nf4_gemm_mode() == 2)) return false;
  cuda::Nf4GemmPart gp[cuda::kNf4GemmMaxParts];
  const int np = gemm_parts(parts, gp);
  // Row stride of x: the SwiGLU input holds gate and up side by side.
  const std::int64_t ldx = input.kind == cuda::GemvIn::kSiluMul ? 2 * in : in;
  for (std::int64_t r0 = 0; r0 < rows; r0 += cuda::kNf4GemmMaxRows) {
    const int m = static_cast<int>(std::min<std::int64_t>(cuda::kNf4GemmMaxRows, rows - r0));
    const std::size_t ws = cuda::nf4_gemm_workspace(m, gp, np, out, in);
    void* w = static_cast<char*>(scratch(c, reserve + ws)) + reserve;
    cuda::nf4_gemm(c.stream, x + r0 * ldx, m, gp, np, out, in, bias(), y + r0 * out, out, accumulate, w, ws, 0,
                   input);
  }
  return true;
}

void DLinear::gemm_f32(const LinearContext& c, const float* x, std::int64_t rows, float* y,
                       bool accumulate) const {
  if (rows <= 0) return;
  // NF4: the fused NF4 GEMM (tensor cores, each packed byte read once per 64 rows) when every part
  // qualifies (nf4_gemm_usable). On the H100 it takes no longer at one row than the NF4 GEMV (37888×3584:
  // 0.054 against 0.062 ms), and 8 rows no longer than one.
  if (format == WeightFormat::kNF4 && nf4_gemm_parts(c, x, rows, y, accumulate)) return;
  // Otherwise the NF4 GEMV's time grows with its rows (issue-bound: 0.31 ms for 37888×3584 at 8 rows
  // against 0.33 ms to dequantize it), so the weight is dequantized to bf16 once and multiplied like a
  // bf16 weight.
  const bool nf4_as_bf16 = format == WeightFormat::kNF4 && rows > cuda::kGemvMaxRows;
  if (format == WeightFormat::kBF16 || nf4_as_bf16) {
    const std::size_t w_bytes =
        nf4_as_bf16 ? (static_cast<std::size_t>(out * in) * sizeof(bf16) + 255) & ~std::size_t{255} : 0;
    const std::size_t a_bytes =
        (static_cast<std::size_t>(2 * rows * in) * sizeof(bf16) + 255) & ~std::size_t{255};
    const std::size_t y_bytes = static_cast<std::size_t>(2 * rows * out) * sizeof(float);
    auto* base = static_cast<char*>(scratch(c, w_bytes + a_bytes + y_bytes));
    const bf16* wb = w.as<bf16>();
    if (nf4_as_bf16) {
      dequantize_nf4(*this, c.stream, reinterpret_cast<bf16*>(base));
      wb = reinterpret_cast<const bf16*>(base);
    }
    auto* hi = reinterpret_cast<bf16*>(base + w_bytes);
    auto* y2 = reinterpret_cast<float*>(base + w_bytes + a_bytes);
    cuda::split_bf16(c.stream, x, rows * in, hi, hi + rows * in);
    c.gemm->run(c.stream, hi, 2 * rows, wb, out, in, nullptr, y2, false);
    cuda::add_row_halves(c.stream, y2, rows, out, bias(), y, accumulate);
    return;
  }
  for (std::int64_t r0 = 0; r0 < rows; r0 += cuda::kGemvMaxRows) {
    const int m = static_cast<int>(std::min<std::int64_t>(cuda::kGemvMaxRows, rows - r0));
    gemv(c, x + r0 * in, m, y + r0 * out, accumulate);
  }
}

void DLinear::gemv(const LinearContext& c, const float* x, int rows, float* y, bool accumulate,
                   const cuda::GemvInput& input) const {
  switch (format) {
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
    case WeightFormat::kF32:
      cuda::gemv_typed(c.stream, x, rows, w.data(), dense_type(format), out, in, bias(), y, out, accumulate,
                       input);
      return;
    case WeightFormat::kNF4: {
      if (nf4_gemm_parts(c, x, rows, y, accumulate, input)) return;  // the input formed in its first kernel
      // The NF4 GEMV is bound by its instruction issue, not by memory: a norm or SwiGLU product taken in
      // every block costs it more than a kernel of its own (measured on the H100: 7B decode 181 -> 144
      // tok/s), so the input is formed once here and the GEMV reads it plainly.
      const float* xin = x;
      if (input.kind != cuda::GemvIn::kPlain) {
        auto* t = static_cast<float*>(scratch(c, static_cast<std::size_t>(rows * in) * sizeof(float)));
        if (input.kind == cuda::GemvIn::kRmsNorm)
          cuda::rms_norm_f32(c.stream, x, rows, in, in, input.norm_w, input.eps, t);
        else
          cuda::silu_mul_f32(c.stream, x, rows, in, t);
        xin = t;
      }
      const float* bs = bias();
      for (const Nf4Part& p : parts) {
        const float* pb = bs ? bs + p.row0 : nullptr;
        if (p.dense.size())
          cuda::gemv_typed(c.stream, xin, rows, p.dense.data(), cuda::ElemType::kBF16, p.rows, in, pb,
                           y + p.row0, out, accumulate);
        else
          cuda::nf4_gemv(c.stream, xin, rows, p.ref, p.rows, in, pb, y + p.row0, out, accumulate);
      }
      return;
    }
  }
  fail(Errc::kInternal, "linear: unknown weight format");
}

void DLinear::pad_in(cudaStream_t s, std::int64_t new_in) {
  if (new_in <= in || out <= 0) return;
  if (format == WeightFormat::kNF4) {
    in_pad = new_in;
    return;
  }
  const std::size_t es = cuda::elem_size(dense_type(format));
  Buffer wide;
  wide.resize(static_cast<std::size_t>(out * new_in) * es);
  cuda::check(cudaMemsetAsync(wide.data(), 0, wide.size(), s), "linear: zero the padded weight");
  cuda::check(cudaMemcpy2DAsync(wide.data(), static_cast<std::size_t>(new_in) * es, w.data(),
                                static_cast<std::size_t>(in) * es, static_cast<std::size_t>(in) * es,
                                static_cast<std::size_t>(out), cudaMemcpyDeviceToDevice, s),
              "linear: copy the weight into its padded rows");
  cuda::check(cudaStreamSynchronize(s), "linear: pad the weight");  // before the old buffer is freed
  w = std::move(wide);
  in = new_in;
}

void DLinear::embed_rows(cudaStream_t s, const std::int32_t* ids, const std::int32_t* feature_row,
                         const float* features, std::int64_t rows, float* x) const {
  if (format == WeightFormat::kBF16) {
    cuda::embed_rows(s, w.as<bf16>(), in, ids, feature_row, features, rows, x);
    return;
  }
  cuda::embed_rows_typed(s, w.data(), dense_type(format), in, ids, feature_row, features, rows, x);
}

Uploader::Uploader(cudaStream_t s) : s_(s) {
  for (int i = 0; i < 2; ++i) {
    cuda::check(cudaMallocHost(&pinned_[i], kStage), "pinned staging buffer");
    cuda::check(cudaEventCreateWithFlags(&ev_[i], cudaEventDisableTiming), "event");
    scratch_[i].resize(kStage);
  }
}

Uploader::~Uploader() {
  cudaStreamSynchronize(s_);
  for (int i = 0; i < 2; ++i) {
    cudaFreeHost(pinned_[i]);
    cudaEventDestroy(ev_[i]);
  }
}

void Uploader::put_bf16(const ops::Matrix& m, bf16* dst) { put(m, dst, true); }
void Uploader::put_raw(const ops::Matrix& m, void* dst) { put(m, dst, false); }

void Uploader::put(const ops::Matrix& m, void* dst, bool to_bf16) {
  MV_CHECK(m.nf4 == nullptr, "an NF4 weight cannot be uploaded as a dense matrix");
  MV_CHECK(m.dtype == DType::kBF16 || m.dtype == DType::kF16 || m.dtype == DType::kF32,
           "weight upload: unsupported dtype {}", dtype_name(m.dtype));
  const std::int64_t n = m.rows * m.cols;
  const std::size_t esz = dtype_size(m.dtype);
  const std::int64_t per = static_cast<std::int64_t>(kStage / esz);
  const bool raw = !to_bf16 || m.dtype == DType::kBF16;
  for (std::int64_t off = 0; off < n; off += per) {
    const std::int64_t cnt = std::min(per, n - off);
    cuda::check(cudaEventSynchronize(ev_[cur_]), "staging wait");
    std::memcpy(pinned_[cur_], static_cast<const char*>(m.data) + off * esz,
                static_cast<std::size_t>(cnt) * esz);
    if (raw) {
      cuda::check(cudaMemcpyAsync(static_cast<char*>(dst) + off * esz, pinned_[cur_],
                                  static_cast<std::size_t>(cnt) * esz, cudaMemcpyHostToDevice, s_),
                  "weight upload");
    } else {
      bf16* out = static_cast<bf16*>(dst) + off;
      cuda::check(cudaMemcpyAsync(scratch_[cur_].data(), pinned_[cur_], static_cast<std::size_t>(cnt) * esz,
                                  cudaMemcpyHostToDevice, s_),
                  "weight upload");
      if (m.dtype == DType::kF32)
        cuda::f32_to_bf16(s_, scratch_[cur_].as<float>(), cnt, out);
      else
        cuda::f16_to_bf16(s_, scratch_[cur_].as<std::uint16_t>(), cnt, out);
    }
    cuda::check(cudaEventRecord(ev_[cur_], s_), "staging record");
    cur_ ^= 1;
    bytes_ += static_cast<std::uint64_t>(cnt) * esz;
  }
}

quant::Nf4Device Uploader::quantize_nf4(const ops::Matrix& m) {
  const std::int64_t n = m.rows * m.cols;
  raw_.ensure(std::max<std::size_t>(static_cast<std::size_t>(n) * dtype_size(m.dtype), 1));
  put_raw(m, raw_.data());
  // quantize_nf4_device synchronizes the stream before returning, so raw_ can be reused at once.
  return quant::quantize_nf4_device(s_, raw_.data(), m.dtype, n);
}

Buffer upload_vec(const std::vector<float>& v) {
  Buffer b(v.size() * sizeof(float));
  cuda::check(cudaMemcpy(b.data(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice),
              "vector upload");
  return b;
}

DLinear fuse(Uploader& up, std::initializer_list<const Linear*> parts) {
  DLinear d;
  d.in = (*parts.begin())->w.cols;
  bool nf4 = false, same = true;
  const DType first = (*parts.begin())->w.dtype;
  for (const Linear* p : parts) {
    MV_CHECK(p->w.cols == d.in, "fused linear: in features {} vs {}", p->w.cols, d.in);
    d.out += p->w.rows;
    nf4 = nf4 || p->w.nf4 != nullptr || p->nf4_at_load;
    same = same && p->w.dtype == first;
  }
  if (nf4) {
    d.format = WeightFormat::kNF4;
    std::int64_t row = 0;
    for (const Linear* p : parts) {
      Nf4Part& part = d.parts.emplace_back();
      part.row0 = row;
      part.rows = p->w.rows;
      if (p->w.nf4) {
        MV_CHECK(p->w.nf4->numel == p->w.rows * p->w.cols, "NF4 weight of {} elements for [{}, {}]",
                 p->w.nf4->numel, p->w.rows, p->w.cols);
        part.q = quant::upload_nf4(up.stream(), *p->w.nf4);
      } else if (p->nf4_at_load) {
        part.q = up.quantize_nf4(p->w);
      } else {
        part.dense.resize(static_cast<std::size_t>(p->w.rows * d.in) * sizeof(bf16));
        up.put_bf16(p->w, part.dense.as<bf16>());
      }
      if (!part.dense.size()) part.ref = part.q.ref();
      row += p->w.rows;
    }
  } else {
    d.format = same ? format_of(first) : WeightFormat::kBF16;
    const std::size_t esz = cuda::elem_size(dense_type(d.format));
    d.w.resize(static_cast<std::size_t>(d.out * d.in) * esz);
    std::int64_t row = 0;
    for (const Linear* p : parts) {
      char* dst = d.w.as<char>() + static_cast<std::size_t>(row * d.in) * esz;
      if (d.format == WeightFormat::kBF16)
        up.put_bf16(p->w, reinterpret_cast<bf16*>(dst));
      else
        up.put_raw(p->w, dst);
      row += p->w.rows;
    }
  }
  bool bias = false;
  for (const Linear* p : parts) bias = bias || !p->bias.empty();
  if (bias) {
    std::vector<float> b;
    b.reserve(static_cast<std::size_t>(d.out));
    for (const Linear* p : parts) {
      if (p->bias.empty())
        b.insert(b.end(), static_cast<std::size_t>(p->w.rows), 0.0f);
      else
        b.insert(b.end(), p->bias.begin(), p->bias.end());
    }
    d.b = upload_vec(b);
  }
  return d;
}

DLinear matrix(Uploader& up, const ops::Matrix& m) {
  if (m.nf4) {  // an NF4 lm_head (bitsandbytes keeps it 16-bit by default, but a file may hold it so)
    Linear l;
    l.w = m;
    return single(up, l);
  }
  DLinear d;
  d.out = m.rows;
  d.in = m.cols;
  d.format = format_of(m.dtype);
  d.w.resize(static_cast<std::size_t>(m.rows * m.cols) * dtype_size(m.dtype));
  up.put_raw(m, d.w.data());
  return d;
}

DLinear matrix_bf16(Uploader& up, const ops::Matrix& m) {
  DLinear d;
  d.out = m.rows;
  d.in = m.cols;
  d.w.resize(static_cast<std::size_t>(m.rows * m.cols) * sizeof(bf16));
  up.put_bf16(m, d.w.as<bf16>());
  return d;
}

}  // namespace mv::qwen25vl::cudaeng
#endif
