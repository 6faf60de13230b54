// The Python module real_ext._C. Importing it runs the static op registrations
// of every linked source; the module itself carries no Python functions
// (everything is reached through torch.ops.real_ext).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
