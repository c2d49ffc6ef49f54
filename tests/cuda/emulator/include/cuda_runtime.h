// Emulation shim (tests/cuda/emulator): stands in for the CUDA toolkit's cuda_runtime.h.
#pragma once

#define MOE_CUDA_EMULATION 1

#include <cmath>

#include "../emulator.hpp"
