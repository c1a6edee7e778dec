/* Every header the CUDA sources include, in one place. The emulated build
 * (emu/, docs/DESIGN.md "Emulated CUDA") compiles each .cu inside
 * `namespace ct_emu { ... }` after including this file first, so nothing a
 * .cu includes may be a system or library header that is not listed here:
 * add it here instead. */
#ifndef CT_CUDA_INCLUDES_H
#define CT_CUDA_INCLUDES_H

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime> /* bench_gemm.cu: the host clock of the emulated build */

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "autograd/arena.h"
#include "autograd/backend.h"
#include "autograd/ct_error.h"
#include "autograd/ct_inline.h"
#include "autograd/quant.h"
#include "autograd/quant_tables.h"
#include "autograd/tensor.h"

#ifdef CT_EMU_BUILD
#include "emu/cuda_emu.h"
#endif

#endif
