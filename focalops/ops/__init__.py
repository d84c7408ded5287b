"""One module per op family: its wrappers (type conversions and defaults), the Python statement
of its C++ argument checks (run by the wrappers and by the fake kernels), its fake kernels and
its autograd formulas, registered beside the op."""
