/* OpenMP shim for the generated Cython kernels (fastopt/kernels/_codegen.py writes the .pyx): the same source builds with and without OpenMP.
 * Cython guards its own `#pragma omp` lines with `#ifdef _OPENMP`; this header does the same for
 * the few runtime calls the module makes. */
#ifndef FASTOPT_OMP_SHIM_H
#define FASTOPT_OMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
#define FASTOPT_OPENMP 1
static int fastopt_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define FASTOPT_OPENMP 0
static int fastopt_omp_max_threads(void) { return 1; }
#endif

#endif /* FASTOPT_OMP_SHIM_H */
