// The SIMT emulation build (csrc/emu) puts this folder first on the include path.
#pragma once
#include "emu/simt.h"
