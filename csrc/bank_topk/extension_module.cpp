// The Python module entry point of the whole extension (reidscale._C, or the JIT-built module of
// reidscale/kernels/cuda.py). It defines no Python functions: importing the module loads the shared library,
// whose TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL blocks register the ops under torch.ops.reidscale.
// Exactly one source of the extension may define this (it lives here because bank_topk was the first op).

#include <Python.h>

#define REIDSCALE_CONCAT_(a, b) a##b
#define REIDSCALE_CONCAT(a, b) REIDSCALE_CONCAT_(a, b)
#define REIDSCALE_STRINGIFY_(a) #a
#define REIDSCALE_STRINGIFY(a) REIDSCALE_STRINGIFY_(a)

PyMODINIT_FUNC REIDSCALE_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      REIDSCALE_STRINGIFY(TORCH_EXTENSION_NAME),
      "reidscale CUDA ops; importing this module registers them under torch.ops.reidscale",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
