# Sourced on the GPU machine: unpacks .carry/cuda/bundle.tar.xz into /tmp/mv and points the loader at its
# libraries and at the machine's own cuBLAS (CUDA install or PyTorch's nvidia wheels).
mkdir -p /tmp/mv && tar -C /tmp/mv -xJf .carry/cuda/bundle.tar.xz
MV_CUBLAS_DIR=$(dirname "$( (ls /usr/local/cuda/lib64/libcublasLt.so.13* 2>/dev/null; \
  find / -xdev -name 'libcublasLt.so.13*' 2>/dev/null) | head -1)")
MV_CUDART_DIR=$(dirname "$( (ls /usr/local/cuda/lib64/libcudart.so.13* 2>/dev/null; \
  find / -xdev -name 'libcudart.so.13*' 2>/dev/null) | head -1)")
export LD_LIBRARY_PATH=/tmp/mv/bundle/lib:$MV_CUBLAS_DIR:$MV_CUDART_DIR:${LD_LIBRARY_PATH:-}
export PATH=/tmp/mv/bundle/bin:$PATH
export MV_CUBLAS_DIR MV_CUDART_DIR
# The bundle's Tesseract model when the machine has none.
if [ -f /tmp/mv/bundle/tessdata/eng.traineddata ] && [ ! -f /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ]; then
  export TESSDATA_PREFIX=/tmp/mv/bundle/tessdata
fi
