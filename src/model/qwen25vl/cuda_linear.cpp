#if MEDVISION_HAS_CUDA
#include "model/qwen25vl/cuda_linear.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"

namespace mv::qwen25vl::cudaeng {

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kBF16:
      return "bf16";
  }
  return "?";
}

const bf16* DLinear::bf16_rows() const {
  MV_CHECK(format == WeightFormat::kBF16, "weight rows requested as bf16 from a {} weight",
           format_name(format));
  return w.as<bf16>();
}

void DLinear::gemm(const LinearContext& c, const bf16* a, std::int64_t rows, float* y,
                   bool accumulate) const {
  switch (format) {
    case WeightFormat::kBF16:
      c.gemm->run(c.stream, a, rows, w.as<bf16>(), out, in, bias(), y, accumulate);
      return;
  }
  fail(Errc::kInternal, "linear: unknown weight format");
}

void DLinear::gemv(const LinearContext& c, const float* x, int rows, float* y, bool accumulate) const {
  switch (format) {
    case WeightFormat::kBF16:
      cuda::gemv(c.stream, x, rows, w.as<bf16>(), out, in, bias(), y, accumulate);
      return;
  }
  fail(Errc::kInternal, "linear: unknown weight format");
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

void Uploader::put_bf16(const ops::Matrix& m, bf16* dst) {
  MV_CHECK(m.nf4 == nullptr, "an NF4 weight cannot be uploaded as bf16");
  MV_CHECK(m.dtype == DType::kBF16 || m.dtype == DType::kF16 || m.dtype == DType::kF32,
           "weight upload: unsupported dtype {}", dtype_name(m.dtype));
  const std::int64_t n = m.rows * m.cols;
  const std::size_t esz = dtype_size(m.dtype);
  const std::int64_t per = static_cast<std::int64_t>(kStage / esz);
  for (std::int64_t off = 0; off < n; off += per) {
    const std::int64_t cnt = std::min(per, n - off);
    cuda::check(cudaEventSynchronize(ev_[cur_]), "staging wait");
    std::memcpy(pinned_[cur_], static_cast<const char*>(m.data) + off * esz,
                static_cast<std::size_t>(cnt) * esz);
    if (m.dtype == DType::kBF16) {
      cuda::check(cudaMemcpyAsync(dst + off, pinned_[cur_], static_cast<std::size_t>(cnt) * 2,
                                  cudaMemcpyHostToDevice, s_),
                  "weight upload");
    } else {
      cuda::check(cudaMemcpyAsync(scratch_[cur_].data(), pinned_[cur_], static_cast<std::size_t>(cnt) * esz,
                                  cudaMemcpyHostToDevice, s_),
                  "weight upload");
      if (m.dtype == DType::kF32)
        cuda::f32_to_bf16(s_, scratch_[cur_].as<float>(), cnt, dst + off);
      else
        cuda::f16_to_bf16(s_, scratch_[cur_].as<std::uint16_t>(), cnt, dst + off);
    }
    cuda::check(cudaEventRecord(ev_[cur_], s_), "staging record");
    cur_ ^= 1;
    bytes_ += static_cast<std::uint64_t>(cnt) * esz;
  }
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
  for (const Linear* p : parts) d.out += p->w.rows;
  d.w.resize(static_cast<std::size_t>(d.out * d.in) * sizeof(bf16));
  std::int64_t row = 0;
  bool bias = false;
  for (const Linear* p : parts) {
    MV_CHECK(p->w.cols == d.in, "fused linear: in features {} vs {}", p->w.cols, d.in);
    up.put_bf16(p->w, d.w.as<bf16>() + row * d.in);
    row += p->w.rows;
    bias = bias || !p->bias.empty();
  }
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
