#!/usr/bin/env bash
# One pass of the GPU checks on a CUDA machine, from the repository root, with nothing installed but the package's
# dependencies: the backends table, the device tests (CUDA vs the CPU reference, SAT parity on the GPU), and decode
# speed on the GPU next to the CPU. Prints compact tables; the tests are the pass/fail part.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m glm_engine.cli.main backends
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py tests/test_sat_parity.py tests/test_model.py \
  tests/test_triton_kernels.py tests/test_cuda_attention.py tests/test_cuda_graph.py tests/test_rocm_dcu.py \
  tests/test_engine.py -rs 2>&1 | tail -n 20
python3 benchmarks/decode.py --backend cuda --layers 8 --hidden 4096 --heads 32 --inner 10922 --steps 32
# The same decode with each step replayed as a CUDA graph (launch overhead removed; compare ms/token with the above).
python3 benchmarks/decode.py --backend cuda --layers 8 --hidden 4096 --heads 32 --inner 10922 --steps 32 --cuda-graphs \
  --dtypes bf16,fp16
python3 benchmarks/decode.py --backend cpu --layers 8 --hidden 4096 --heads 32 --inner 10922 --steps 4 --dtypes fp32,bf16
# Triton dequant-GEMM kernels: NMSE checks at the real tiles, then decode/prefill GB/s next to the fp16 GEMM.
python3 benchmarks/quant_gpu.py --m 1,128
