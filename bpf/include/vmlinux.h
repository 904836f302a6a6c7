/* Kernel type definitions for CO-RE, one generated header per architecture.
 * Each per-architecture file names the kernel its BTF was dumped from; CO-RE
 * relocates every field access to the running kernel's layout at load time. */
#pragma once

#if defined(__TARGET_ARCH_x86)
#include "x86_64/vmlinux.h"
#elif defined(__TARGET_ARCH_arm64)
#include "aarch64/vmlinux.h"
#else
#error "tyr: no vmlinux.h for this architecture (x86_64 and aarch64 are supported)"
#endif
