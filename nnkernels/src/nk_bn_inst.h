/* Instantiate nk_bn_body.h for float32, float64 and float32 with a bfloat16
 * x under the ISA the
 * includer has defined (ISA: the name suffix, inside that ISA's target
 * region); undefines ISA afterwards. */
#define T float
#define TI uint32_t
#define S s
#define BN_MASK_INT 1
#define BN_SUBSUM 1
#include "nk_bn_body.h"
#undef T
#undef TI
#undef S
#undef BN_MASK_INT
#undef BN_SUBSUM
#define T double
#define TI uint64_t
#define S d
#define BN_MASK_INT 0
#define BN_SUBSUM 0
#include "nk_bn_body.h"
#undef T
#undef TI
#undef S
#undef BN_MASK_INT
#undef BN_SUBSUM
/* float32 with x stored as bfloat16 (nk_bn_kern_h) */
#define T float
#define TI uint32_t
#define S h
#define BN_MASK_INT 1
#define BN_SUBSUM 1
#define BN_XBF16 1
#include "nk_bn_body.h"
#undef T
#undef TI
#undef S
#undef BN_MASK_INT
#undef BN_SUBSUM
#undef BN_XBF16
#undef ISA
