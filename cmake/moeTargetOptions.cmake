# Flags for moe's own executables (tests, examples, benchmarks) — never put on the INTERFACE target,
# so consumers keep their own warning and optimisation choices.
function(moe_target_options target)
  # An explicit -std=c++17 (no GNU extensions) so tools reading compile_commands.json agree.
  set_target_properties(${target} PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>)
  if(MOE_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(MOE_SANITIZE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined
                                              -fno-sanitize-recover=all -fno-omit-frame-pointer>)
    target_link_options(${target} PRIVATE $<$<LINK_LANGUAGE:CXX>:-fsanitize=address,undefined>)
  endif()
  target_link_libraries(${target} PRIVATE moe::moe)
endfunction()

# Benchmarks measure this machine and the model tools run real models on it: compile them for its CPU. GCC 12's AVX-512 intrinsic headers
# raise a false -Wmaybe-uninitialized inside avx512fintrin.h (GCC bug 105593), not in our code.
function(moe_native_options target)
  if(MOE_NATIVE)
    target_compile_options(${target} PRIVATE -march=native)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
    endif()
  endif()
endfunction()

# A target that is only compiled, never run (a header or compile-time check): a sanitizer build
# (MOE_SANITIZE), which is for running the tests, leaves it out of `all`; instrumented compiles are
# the slowest stage of .ci/run.
function(moe_compile_only target)
  if(MOE_SANITIZE)
    set_target_properties(${target} PROPERTIES EXCLUDE_FROM_ALL ON)
  endif()
endfunction()

# moe's own CUDA executables (MOE_ENABLE_CUDA): warnings of nvcc and of the host compiler. No
# -Wpedantic for the host pass: nvcc's generated code uses GCC-style line directives.
function(moe_cuda_target_options target)
  moe_target_options(${target})
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(MOE_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
endfunction()
