/* Test harness only; never shipped. Debian 12's Wine (8.0) has no
 * bcryptprimitives.dll, whose ProcessPrng both Rust's std and Go import on
 * Windows, so neither starts under it. This DLL gives Wine one, over
 * advapi32's RtlGenRandom (exported as SystemFunction036). */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, part))
            return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
