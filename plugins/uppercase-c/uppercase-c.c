/* `uppercase` in C: the payload upper-cased (ASCII), uuid and metadata kept (as
 * plugins/uppercase). */
#include "wasmill.h"

static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
    wasmill_bytes_t p = wasmill_payload(msg);
    for (size_t i = 0; i < p.len; i++) {
        if (p.ptr[i] >= 'a' && p.ptr[i] <= 'z') p.ptr[i] -= 'a' - 'A';
    }
    wasmill_set_payload(msg, p);
    return wasmill_emit(out, msg);
}

WASMILL_HANDLER(handle)
