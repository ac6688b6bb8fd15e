#if MEDVISION_HAS_CUDA
#include "quant/nf4_cuda.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.hpp"

namespace mv::quant {

namespace {

template <typename T>
void to_device(cudaStream_t s, cuda::Buffer& b, const T* src, std::size_t n) {
  b.resize(std::max<std::size_t>(n * sizeof(T), 1));
  if (n) cuda::check(cudaMemcpyAsync(b.data(), src, n * sizeof(T), cudaMemcpyHostToDevice, s), "NF4 upload");
}

template <typename T>
void to_host(cudaStream_t s, const cuda::Buffer& b, std::vector<T>& dst, std::size_t n) {
  dst.resize(n);
  if (n)
    cuda::check(cudaMemcpyAsync(dst.data(), b.data(), n * sizeof(T), cudaMemcpyDeviceToHost, s),
                "NF4 download");
}

int log2_exact(std::int64_t v, const char* what) {
  if (v < 2 || (v & (v - 1)) != 0) fail(Errc::kInvalidInput, "NF4: {} {} is not a power of two", what, v);
  return std::countr_zero(static_cast<std::uint64_t>(v));
}

}  // namespace

cuda::ElemType elem_type(DType dt) {
  switch (dt) {
    case DType::kF32:
      return cuda::ElemType::kF32;
    case DType::kF16:
      return cuda::ElemType::kF16;
    case DType::kBF16:
      return cuda::ElemType::kBF16;
    default:
      fail(Errc::kUnsupported, "CUDA: dtype {} is not a floating weight type (F32, F16, BF16)",
           dtype_name(dt));
  }
}

cuda::Nf4Ref Nf4Device::ref() const {
  cuda::Nf4Ref r;
  r.packed = packed.as<std::uint8_t>();
  r.numel = numel;
  r.block_shift = log2_exact(blocksize, "blocksize");
  r.code = code.as<float>();
  if (nested) {
    r.absmax_q = absmax_q.as<std::uint8_t>();
    r.nested_absmax = nested_absmax.as<float>();
    r.nested_code = nested_code.as<float>();
    r.nested_shift = log2_exact(nested_blocksize, "nested blocksize");
    r.offset = offset;
  } else {
    r.absmax = absmax.as<float>();
  }
  return r;
}

Nf4Device quantize_nf4_device(cudaStream_t s, const void* src, DType dt, std::int64_t numel) {
  const cuda::ElemType et = elem_type(dt);
  Nf4Device d;
  d.numel = numel;
  const std::int64_t nb = (numel + kNf4BlockSize - 1) / kNf4BlockSize;
  const std::int64_t nb2 = (nb + kNestedBlockSize - 1) / kNestedBlockSize;
  d.packed.resize(static_cast<std::size_t>(std::max<std::int64_t>((numel + 1) / 2, 1)));
  cuda::Buffer absmax(static_cast<std::size_t>(std::max<std::int64_t>(nb, 1)) * sizeof(float));
  cuda::nf4_quantize_blocks(s, src, et, numel, log2_exact(kNf4BlockSize, "blocksize"),
                            d.packed.as<std::uint8_t>(), absmax.as<float>());
  // The offset: the mean of the fp32 maxima, summed in double in index order like double_quantize.
  std::vector<float> host;
  to_host(s, absmax, host, static_cast<std::size_t>(nb));
  cuda::check(cudaStreamSynchronize(s), "NF4 block maxima");
  double sum = 0.0;
  for (float a : host) sum += a;
  d.offset = nb > 0 ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
  to_device(s, d.code, kNf4Code.data(), kNf4Code.size());
  to_device(s, d.nested_code, dynamic_map().data(), 256);
  d.absmax_q.resize(static_cast<std::size_t>(std::max<std::int64_t>(nb, 1)));
  d.nested_absmax.resize(static_cast<std::size_t>(std::max<std::int64_t>(nb2, 1)) * sizeof(float));
  cuda::nf4_double_quantize(s, absmax.as<float>(), nb, d.offset, d.nested_code.as<float>(),
                            d.absmax_q.as<std::uint8_t>(), d.nested_absmax.as<float>());
  // `absmax` (and `host`) must outlive the kernels that read them.
  cuda::check(cudaStreamSynchronize(s), "NF4 double quantization");
  return d;
}

Nf4Device upload_nf4(cudaStream_t s, const Nf4View& v) {
  Nf4Device d;
  d.numel = v.numel;
  d.blocksize = v.blocksize;
  const auto nb = static_cast<std::size_t>(v.blocks());
  to_device(s, d.packed, v.packed, static_cast<std::size_t>((v.numel + 1) / 2));
  to_device(s, d.code, v.code, 16);
  d.nested = v.nested();
  if (d.nested) {
    d.nested_blocksize = v.nested_blocksize;
    d.offset = v.offset;
    const std::size_t nb2 = (nb + static_cast<std::size_t>(v.nested_blocksize) - 1) /
                            static_cast<std::size_t>(v.nested_blocksize);
    to_device(s, d.absmax_q, v.absmax_q, nb);
    to_device(s, d.nested_absmax, v.nested_absmax, nb2);
    to_device(s, d.nested_code, v.nested_code, 256);
  } else {
    to_device(s, d.absmax, v.absmax, nb);
  }
  d.ref();  // validates the block sizes
  return d;
}

Nf4Tensor download_nf4(cudaStream_t s, const Nf4Device& d, std::vector<std::int64_t> shape, DType dtype) {
  MV_CHECK(d.nested && d.blocksize == kNf4BlockSize, "download_nf4: only block 64 with double quantization");
  Nf4Tensor t;
  t.shape = std::move(shape);
  t.dtype = dtype;
  t.numel = d.numel;
  t.blocksize = d.blocksize;
  t.nested = true;
  t.offset = d.offset;
  t.code = kNf4Code;
  t.nested_code = dynamic_map();
  const std::int64_t nb = (d.numel + d.blocksize - 1) / d.blocksize;
  const std::int64_t nb2 = (nb + kNestedBlockSize - 1) / kNestedBlockSize;
  to_host(s, d.packed, t.packed, static_cast<std::size_t>((d.numel + 1) / 2));
  to_host(s, d.absmax_q, t.absmax_q, static_cast<std::size_t>(nb));
  to_host(s, d.nested_absmax, t.nested_absmax, static_cast<std::size_t>(nb2));
  cuda::check(cudaStreamSynchronize(s), "NF4 download");
  return t;
}

CudaQuantizer::CudaQuantizer(int device) : device_(device) {
  cuda::check(cudaSetDevice(device_), "select device");
  cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
}

CudaQuantizer::~CudaQuantizer() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  src_.release();
  cudaStreamDestroy(stream_);
}

Nf4Tensor CudaQuantizer::quantize(const void* data, DType dtype, std::vector<std::int64_t> shape) {
  cuda::check(cudaSetDevice(device_), "select device");
  std::int64_t numel = 1;
  for (auto v : shape) numel *= v;
  const std::size_t bytes = static_cast<std::size_t>(numel) * cuda::elem_size(elem_type(dtype));
  src_.ensure(std::max<std::size_t>(bytes, 1));
  if (bytes)
    cuda::check(cudaMemcpyAsync(src_.data(), data, bytes, cudaMemcpyHostToDevice, stream_), "tensor upload");
  const Nf4Device d = quantize_nf4_device(stream_, src_.data(), dtype, numel);
  return download_nf4(stream_, d, std::move(shape), dtype);
}

}  // namespace mv::quant
#endif
