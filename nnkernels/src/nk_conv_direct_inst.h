/* Instantiate nk_conv_direct.h (and the Winograd transforms,
 * nk_conv_wino.h) for float32 and float64 under the ISA and
 * register-tile sizes the includer has defined (ISA, RB_FWD, RB_WG, RB_DG);
 * undefines them afterwards.  FB: channels per block (two 64-byte vectors). */
#define T float
#define TI int32_t
#define S s
#define FB 32
#include "nk_conv_direct.h"
#include "nk_conv_wino.h"
#undef T
#undef TI
#undef S
#undef FB
#define T double
#define TI int64_t
#define S d
#define FB 16
#include "nk_conv_direct.h"
#include "nk_conv_wino.h"
#undef T
#undef TI
#undef S
#undef FB
#undef RB_FWD
#undef RB_WG
#undef RB_DG
#undef ISA
