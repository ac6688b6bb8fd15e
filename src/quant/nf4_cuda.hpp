// NF4 tensors on an NVIDIA GPU: quantizing on the device (codes, scales and offset bit-identical to
// quant::quantize_nf4), uploading a checkpoint's NF4 weight, and downloading a device result into the
// checkpoint layout (`medvision quantize --device cuda`). See docs/design/nf4.md (CUDA part).
#pragma once
#if MEDVISION_HAS_CUDA
#include <cstdint>
#include <vector>

#include "ops/cuda/weight_formats.hpp"
#include "quant/nf4.hpp"

namespace mv::quant {

cuda::ElemType elem_type(DType dt);  // F32/F16/BF16, else kUnsupported

// One NF4 tensor in device memory (double quantization or fp32 scales, any power-of-two block size).
struct Nf4Device {
  cuda::Buffer packed, absmax, absmax_q, nested_absmax, code, nested_code;
  std::int64_t numel = 0;
  std::int64_t blocksize = kNf4BlockSize;
  std::int64_t nested_blocksize = kNestedBlockSize;
  float offset = 0.0f;
  bool nested = true;  // 8-bit scales with a second level, else fp32 scales in `absmax`
  cuda::Nf4Ref ref() const;
  std::uint64_t bytes() const {
    return packed.size() + absmax.size() + absmax_q.size() + nested_absmax.size() + code.size() +
           nested_code.size();
  }
};

// Quantizes numel elements of `src` (device memory, type dt) with block 64 and double quantization.
// The mean of the block maxima is summed on the host in double, as quantize_nf4 does; the call
// synchronizes `stream` once for that.
Nf4Device quantize_nf4_device(cudaStream_t stream, const void* src, DType dt, std::int64_t numel);
// Copies a host NF4 tensor (a checkpoint's mapped weight or an Nf4Tensor) to the device.
Nf4Device upload_nf4(cudaStream_t stream, const Nf4View& v);
// Copies a device result back into the checkpoint layout (shape and original dtype given).
Nf4Tensor download_nf4(cudaStream_t stream, const Nf4Device& d, std::vector<std::int64_t> shape, DType dtype);

// Quantizes host data on the GPU (`medvision quantize --device cuda`): uploads, quantizes, downloads.
// Holds a stream and a device buffer that grows to the largest tensor.
class CudaQuantizer {
 public:
  explicit CudaQuantizer(int device);
  ~CudaQuantizer();
  CudaQuantizer(const CudaQuantizer&) = delete;
  CudaQuantizer& operator=(const CudaQuantizer&) = delete;
  Nf4Tensor quantize(const void* data, DType dtype, std::vector<std::int64_t> shape);

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  cuda::Buffer src_;
};

}  // namespace mv::quant
#endif
