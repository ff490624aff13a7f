/* `json-enrich` in C (as plugins/json-enrich): the payload, a JSON object, gets
 * `"enriched": true` and `"handled_by": "json-enrich"`; anything else is a permanent error
 * whose reason starts with `invalid json: `. `content-type` is set to `application/json`.
 * The payload is checked against RFC 8259's grammar (not its UTF-8) by a small scanner, and
 * the two members are appended before the closing brace. */
#include "wasmill.h"

typedef struct {
    const uint8_t *p, *end;
    int depth;
} scan_t;

static bool value(scan_t *s);

static bool at(scan_t *s, uint8_t c) { return s->p < s->end && *s->p == c; }

static void space(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool literal(scan_t *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return false;
    s->p += n;
    return true;
}

static bool is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool string(scan_t *s) {
    if (!at(s, '"')) return false;
    s->p++;
    while (s->p < s->end) {
        uint8_t c = *s->p++;
        if (c == '"') return true;
        if (c < 0x20) return false;
        if (c != '\\') continue;
        if (s->p >= s->end) return false;
        c = *s->p++;
        if (c == 'u') {
            for (int i = 0; i < 4; i++, s->p++)
                if (s->p >= s->end || !is_hex(*s->p)) return false;
        } else if (!strchr("\"\\/bfnrt", c) || c == 0) {
            return false;
        }
    }
    return false;
}

static bool digits(scan_t *s) {
    const uint8_t *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    return s->p > start;
}

static bool number(scan_t *s) {
    if (at(s, '-')) s->p++;
    if (at(s, '0')) s->p++;
    else if (!digits(s)) return false;
    if (at(s, '.')) {
        s->p++;
        if (!digits(s)) return false;
    }
    if (at(s, 'e') || at(s, 'E')) {
        s->p++;
        if (at(s, '+') || at(s, '-')) s->p++;
        if (!digits(s)) return false;
    }
    return true;
}

/* The members of an object (keyed) or the elements of an array, after the opening bracket. */
static bool members(scan_t *s, uint8_t close, bool keyed) {
    space(s);
    if (at(s, close)) {
        s->p++;
        return true;
    }
    for (;;) {
        space(s);
        if (keyed) {
            if (!string(s)) return false;
            space(s);
            if (!at(s, ':')) return false;
            s->p++;
        }
        if (!value(s)) return false;
        space(s);
        if (s->p >= s->end) return false;
        uint8_t c = *s->p++;
        if (c == close) return true;
        if (c != ',') return false;
    }
}

static bool value(scan_t *s) {
    space(s);
    if (s->p >= s->end || ++s->depth > 128) return false;
    bool ok;
    switch (*s->p) {
    case '{': s->p++; ok = members(s, '}', true); break;
    case '[': s->p++; ok = members(s, ']', false); break;
    case '"': ok = string(s); break;
    case 't': ok = literal(s, "true"); break;
    case 'f': ok = literal(s, "false"); break;
    case 'n': ok = literal(s, "null"); break;
    default: ok = number(s);
    }
    s->depth--;
    return ok;
}

static bool fail(wasmill_msg_t msg, wasmill_bytes_t *p, wasmill_out_t *out, const char *why) {
    wasmill_bytes_free(p);
    wasmill_drop(msg);
    return wasmill_fail(out, why, false);
}

static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
    static const char added[] = "\"enriched\":true,\"handled_by\":\"json-enrich\"}";
    wasmill_bytes_t p = wasmill_payload(msg);
    scan_t s = {p.ptr, p.ptr + p.len, 0};
    space(&s);
    bool object = at(&s, '{');
    bool ok = value(&s);
    space(&s);
    if (!ok || s.p != s.end) return fail(msg, &p, out, "invalid json: not a JSON document");
    if (!object) return fail(msg, &p, out, "invalid json: payload is not an object");

    size_t close = p.len;
    while (p.ptr[close - 1] != '}') close--;
    close--; /* the closing brace */
    size_t last = close;
    while (last > 0 && (p.ptr[last - 1] == ' ' || p.ptr[last - 1] == '\t' ||
                        p.ptr[last - 1] == '\n' || p.ptr[last - 1] == '\r'))
        last--;
    bool empty = p.ptr[last - 1] == '{';
    size_t n = last + !empty + sizeof added - 1;
    uint8_t *buf = malloc(n);
    if (!buf) return fail(msg, &p, out, "out of memory");
    memcpy(buf, p.ptr, last);
    if (!empty) buf[last] = ',';
    memcpy(buf + last + !empty, added, sizeof added - 1);
    wasmill_bytes_free(&p);
    wasmill_bytes_t enriched = {buf, n};
    wasmill_set_payload(msg, enriched);
    wasmill_set(msg, "content-type", "application/json");
    return wasmill_emit(out, msg);
}

WASMILL_HANDLER(handle)
