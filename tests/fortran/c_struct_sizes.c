/*
 * sizeof of the public structs as C sees them, for test_api.f90 to compare
 * with c_sizeof of the module's bind(c) types: a field added to the header
 * and not to fortran/insitra.f90 makes C write past the Fortran variable, and
 * this comparison is what notices.
 */
#include <stddef.h>

#include "insitra.h"

size_t insitra_test_sizeof_metrics(void);
size_t insitra_test_sizeof_memory_usage(void);
size_t insitra_test_sizeof_plan(void);
size_t insitra_test_sizeof_plan_grid(void);

size_t insitra_test_sizeof_metrics(void) { return sizeof(insitra_metrics); }
size_t insitra_test_sizeof_memory_usage(void) { return sizeof(insitra_memory_usage); }
size_t insitra_test_sizeof_plan(void) { return sizeof(insitra_plan); }
size_t insitra_test_sizeof_plan_grid(void) { return sizeof(insitra_plan_grid); }
