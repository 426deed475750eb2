#!/usr/bin/env bash
# One pass of the GPU checks on a CUDA machine, from the repository root, with nothing installed but the package's
# dependencies: the backends table, the device tests (CUDA vs the CPU reference, SAT parity on the GPU), and decode
# speed on the GPU next to the CPU (glm-engine bench). Prints compact tables; the tests are the pass/fail part.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m glm_engine.cli.main backends
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py tests/test_sat_parity.py tests/test_model.py \
  tests/test_triton_kernels.py tests/test_cuda_attention.py tests/test_cuda_graph.py tests/test_rocm_dcu.py \
  tests/test_engine.py -rs 2>&1 | tail -n 20
# Decode speed and GB/s of weights against the measured bandwidth (glm-engine bench): replayed CUDA graphs (the
# engine's default on cuda), then eager steps (launch overhead included; compare ITL with the above), then the CPU.
BENCH=(python3 -m glm_engine.cli.main bench --model random:glm-130b --layers 8 --hidden 4096 --heads 32 --inner 10922
  --no-baseline --depth 64)  # list flags given twice add up: each line names its own tests and repetitions
"${BENCH[@]}" --backend cuda --dtype fp32,bf16,fp16 -t tg32 -r 3
GLM_ENGINE_CUDA_GRAPHS=0 "${BENCH[@]}" --backend cuda --dtype bf16,fp16 -t tg32 -r 3
"${BENCH[@]}" --backend cpu --dtype fp32,bf16 -t tg4 -r 1
# Triton dequant-GEMM kernels: NMSE checks at the real tiles, then decode/prefill GB/s next to the fp16 GEMM.
python3 benchmarks/quant_gpu.py --m 1,128
