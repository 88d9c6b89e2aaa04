/* Instantiate nk_conv_direct.h (and the Winograd transforms,
 * nk_conv_wino.h, and the depthwise kernels, nk_conv_dw.h) for float32 and
 * float64 under the ISA and register-tile sizes the includer has defined
 * (ISA, RB_FWD, RB_WG, RB_DG, RB_DW, RB_DWW, WINO_FR), and the float32 direct
 * weight gradient (nk_conv_wgrad.h, WG_VB, WG_ACC, WG_NFMAX); undefines them afterwards.
 * FB: channels per block (two 64-byte vectors). */
#define T float
#define TI int32_t
#define S s
#define FB 32
#include "nk_conv_direct.h"
#include "nk_conv_wino.h"
#include "nk_conv_dw.h"
#include "nk_conv_wgrad.h"
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
#include "nk_conv_dw.h"
#undef T
#undef TI
#undef S
#undef FB
#undef RB_FWD
#undef RB_WG
#undef RB_DG
#undef RB_DW
#undef RB_DWW
#undef WG_VB
#undef WG_ACC
#undef WG_NFMAX
#undef WINO_FR
#undef ISA
