#!/usr/bin/env python3
"""ml-playground placeholder for llama.cpp's converter.

This file stands where llama.cpp's `convert_hf_to_gguf.py` goes. It converts nothing:
run, with any arguments, it prints how to vendor the real script and exits with code 2.
`ml-playground export` recognises it by the first line of this docstring and says so.
"""

import sys

HOW_TO_VENDOR = """\
tools/llama_cpp/convert-hf-to-gguf.py is a placeholder, not llama.cpp's converter.

Vendor the real converter (it must match the gguf package in your environment):

    git clone --depth 1 https://github.com/ggml-org/llama.cpp /tmp/llama.cpp
    cp /tmp/llama.cpp/convert_hf_to_gguf.py /tmp/llama.cpp/convert_lora_to_gguf.py \\
       tools/llama_cpp/

or point [export.ollama] convert_bin at your copy. See tools/llama_cpp/README.md.
"""

if __name__ == "__main__":
    sys.stderr.write(HOW_TO_VENDOR)
    sys.exit(2)
