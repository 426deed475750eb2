"""Batch-1 decode speed of glm-engine against chatglm.cpp (ggml) on the same ChatGLM-6B-shaped weights, per bit width.

Pairs: ggml f16 vs our bf16, ggml q8_0 vs our INT8 rowwise, ggml q4_0 (blocks of 32) vs our INT4 groupwise 32 and INT4
rowwise; at 8 and 4 bits ours with ``lm_head`` in bf16 (the reference's choice) and quantized like the linears
(``+ lm_head``: like for like with ggml, which quantizes its output layer). Every run (one engine, one format, one
round) is a process of its own, so its peak RSS is its own; chatglm.cpp's file of each width is converted once, by
its own converter, in a process of its own. Both engines get the same workload and bench's protocol
(``glm_engine.bench.measure``): a ``--prompt``-token prompt of random text ids, then ``--new-tokens`` decode steps,
``--warmup`` untimed and ``--repetitions`` timed repetitions, the median decode step. Printed per width: decode
tokens/s, the ratio to chatglm.cpp, the bytes a decode step reads, their GB/s as a share of the read bandwidth
measured at the start of the same run (``glm-engine bench``'s probe), peak RSS of each run (loading included, and
over the timed repetitions alone), and the CPU's model and SIMD flags. Asserts nothing.

chatglm.cpp is not a dependency of glm-engine; build it into its own venv, outside the repository (checked on this
project's machines, Python 3.11; 10.5 minutes niced on 2 busy cores; the sdist is needed, and ``--no-build-isolation``
because ``--no-binary :all:`` would otherwise build its build dependency cmake from source too)::

    python3 -m venv /work/peers/chatglm-cpp/venv && cd /work/peers/chatglm-cpp
    venv/bin/pip install setuptools wheel ninja torch==2.13.0 numpy safetensors sentencepiece tabulate tqdm transformers
    venv/bin/pip download --no-deps --no-binary :all: --no-build-isolation chatglm-cpp==0.4.2 -d .
    CMAKE_POLICY_VERSION_MINIMUM=3.5 nice venv/bin/pip install --no-deps --no-build-isolation chatglm_cpp-0.4.2.tar.gz

(torch, numpy, safetensors and sentencepiece for glm-engine's side of its runs, which import this checkout;
tabulate, tqdm and transformers because chatglm.cpp's converter module imports them.)

Run (from this checkout, with glm-engine's own interpreter)::

    python benchmarks/vs_chatglm_cpp.py --random-layers 8 --chatglm-cpp-python /work/peers/chatglm-cpp/venv/bin/python
    python benchmarks/vs_chatglm_cpp.py --hf-dir /data/chatglm-6b --tokenizer /data/ice_text.model --threads 2 \\
        --chatglm-cpp-python VENV/bin/python --rounds 3 --widths 8-bit,4-bit

``--random-layers N`` writes seeded random ChatGLM-6B weights at full width with N layers (fp16: about 0.4 GB per
layer and 1.1 GB for each of the embedding and its stored lm_head copy) and uses the packaged test tokenizer unless
``--tokenizer`` names one: neither engine tokenizes. ``--threads`` applies to both engines (chatglm.cpp 0.4.2 has no
thread setting: see ``glm_engine/bench/vs_chatglm_cpp.py``). Exit status 2 for a problem found before timing (a
missing tokenizer, chatglm.cpp not importable), 1 when a run failed.
"""

from __future__ import annotations

import sys

from glm_engine.bench.vs_chatglm_cpp import main

if __name__ == "__main__":
    sys.exit(main())
