/* `uppercase` in C: the payload upper-cased (ASCII), uuid and metadata kept (as
 * plugins/uppercase). */
#include "wasmill.h"

static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
    wasmill_bytes_t p = wasmill_payload(msg);
    /* The bounds in locals (a byte store may alias anything, `p.len` included) and every
     * byte stored, its change computed without a branch: clang then turns the loop into
     * WebAssembly SIMD (-msimd128), 16 bytes at a time. */
    uint8_t *b = p.ptr;
    size_t n = p.len;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = b[i];
        b[i] = c - ((uint8_t)(c - 'a') < 26) * ('a' - 'A');
    }
    wasmill_set_payload(msg, p);
    return wasmill_emit(out, msg);
}

WASMILL_HANDLER(handle)
