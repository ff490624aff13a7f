/*
 * wasmill.h: a thin layer over the bindings `wit-bindgen c` generates from wit/plugin.wit
 * (wasmill:plugin@0.2.0), so a handler is one function. Written by `wasmill new`; `wasmill
 * build` puts it back if it is missing.
 *
 *   static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
 *       wasmill_bytes_t p = wasmill_payload(msg);          // a copy, yours to change
 *       for (size_t i = 0; i < p.len; i++) p.ptr[i] = toupper(p.ptr[i]);
 *       wasmill_set_payload(msg, p);                       // takes p
 *       return wasmill_emit(out, msg);                     // publish msg, true
 *   }
 *   WASMILL_HANDLER(handle)
 *
 * Return `wasmill_fail(out, "reason", retryable)` (false) to fail the message: retryable
 * lets a Retry middleware try again, false sends it on to the poison queue at once.
 * A middleware (built with -DWASMILL_WORLD_MIDDLEWARE, as its Makefile does) calls
 * `wasmill_next(msg, out)` to run the rest of the chain and is declared with
 * WASMILL_MIDDLEWARE(fn).
 */
#ifndef WASMILL_H
#define WASMILL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef WASMILL_WORLD_MIDDLEWARE
#include "middleware.h"
#define WASMILL_(x) middleware_##x
#else
#include "handler.h"
#define WASMILL_(x) handler_##x
#endif

/* A message held by the host (a handle): pass it on, emit it, or drop it. */
typedef wasmill_plugin_types_own_message_t wasmill_msg_t;
/* Bytes the plugin owns (a payload copy). */
typedef WASMILL_(list_u8_t) wasmill_bytes_t;
/* Where a handler puts its output messages, or its error. */
typedef struct {
    WASMILL_(list_own_message_t) msgs;
    size_t cap;
    WASMILL_(handler_error_t) err;
} wasmill_out_t;

static inline wasmill_plugin_types_borrow_message_t wasmill_borrow_(wasmill_msg_t msg) {
    return wasmill_plugin_types_borrow_message(msg);
}

static inline WASMILL_(string_t) wasmill_str_(const char *s) {
    WASMILL_(string_t) out = {(uint8_t *)s, strlen(s)};
    return out;
}

/* A copy of the payload; free it with wasmill_bytes_free unless wasmill_set_payload took it. */
static inline wasmill_bytes_t wasmill_payload(wasmill_msg_t msg) {
    wasmill_bytes_t p;
    wasmill_plugin_types_method_message_payload(wasmill_borrow_(msg), &p);
    return p;
}

/* The payload's length, without copying it. */
static inline uint64_t wasmill_payload_len(wasmill_msg_t msg) {
    return wasmill_plugin_types_method_message_payload_len(wasmill_borrow_(msg));
}

/* Frees bytes the plugin owns. */
static inline void wasmill_bytes_free(wasmill_bytes_t *b) {
    WASMILL_(list_u8_free)(b);
}

/* Replaces the payload with `p` and frees `p`. */
static inline void wasmill_set_payload(wasmill_msg_t msg, wasmill_bytes_t p) {
    wasmill_plugin_types_method_message_set_payload(wasmill_borrow_(msg), &p);
    wasmill_bytes_free(&p);
}

/* Replaces the payload with `len` bytes at `data` (copied). */
static inline void wasmill_set_payload_copy(wasmill_msg_t msg, const void *data, size_t len) {
    wasmill_bytes_t p = {(uint8_t *)data, len};
    wasmill_plugin_types_method_message_set_payload(wasmill_borrow_(msg), &p);
}

/* The value of metadata `key` as a NUL-terminated string to free(), or NULL when unset. */
static inline char *wasmill_get(wasmill_msg_t msg, const char *key) {
    WASMILL_(string_t) k = wasmill_str_(key), v;
    if (!wasmill_plugin_types_method_message_get(wasmill_borrow_(msg), &k, &v)) return NULL;
    char *out = malloc(v.len + 1);
    if (out) {
        memcpy(out, v.ptr, v.len);
        out[v.len] = 0;
    }
    WASMILL_(string_free)(&v);
    return out;
}

/* Sets metadata `key` to `value`. */
static inline void wasmill_set(wasmill_msg_t msg, const char *key, const char *value) {
    WASMILL_(string_t) k = wasmill_str_(key), v = wasmill_str_(value);
    wasmill_plugin_types_method_message_set(wasmill_borrow_(msg), &k, &v);
}

/* Removes metadata `key`. */
static inline void wasmill_remove(wasmill_msg_t msg, const char *key) {
    WASMILL_(string_t) k = wasmill_str_(key);
    wasmill_plugin_types_method_message_remove(wasmill_borrow_(msg), &k);
}

/* A new message (empty uuid: the host gives it one) with no metadata. */
static inline wasmill_msg_t wasmill_new_message(const void *payload, size_t len) {
    WASMILL_(string_t) uuid = {NULL, 0};
    WASMILL_(list_tuple2_string_string_t) md = {NULL, 0};
    wasmill_bytes_t p = {(uint8_t *)payload, len};
    return wasmill_plugin_types_constructor_message(&uuid, &md, &p);
}

/* Drops a message the plugin will not return. */
static inline void wasmill_drop(wasmill_msg_t msg) {
    wasmill_plugin_types_message_drop_own(msg);
}

/* Writes `text` to the host's log at info level, tagged with the plugin's name. */
static inline void wasmill_log(const char *text) {
    WASMILL_(string_t) m = wasmill_str_(text);
    WASMILL_(list_tuple2_string_string_t) fields = {NULL, 0};
    wasmill_plugin_host_log(WASMILL_PLUGIN_HOST_LEVEL_INFO, &m, &fields);
}

/* Adds `msg` to the output (published to the handler's topic); returns true. */
static inline bool wasmill_emit(wasmill_out_t *out, wasmill_msg_t msg) {
    if (out->msgs.len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 1;
        wasmill_msg_t *grown = realloc(out->msgs.ptr, cap * sizeof *grown);
        if (!grown) abort();
        out->msgs.ptr = grown;
        out->cap = cap;
    }
    out->msgs.ptr[out->msgs.len++] = msg;
    return true;
}

/* Fails the message with `reason` (copied); returns false. Drops what was emitted. */
static inline bool wasmill_fail(wasmill_out_t *out, const char *reason, bool retryable) {
    for (size_t i = 0; i < out->msgs.len; i++) wasmill_drop(out->msgs.ptr[i]);
    out->msgs.len = 0;
    size_t n = strlen(reason);
    out->err.reason.ptr = malloc(n ? n : 1);
    if (!out->err.reason.ptr) abort();
    memcpy(out->err.reason.ptr, reason, n);
    out->err.reason.len = n;
    out->err.retryable = retryable;
    return false;
}

/* The user's function runs on one message, in `handle` and for each of `handle-batch`. */
#define WASMILL_RUN_(fn, msg, ok_list, err_out)                                              \
    ({                                                                                       \
        wasmill_out_t out_ = {{NULL, 0}, 0, {{NULL, 0}, false}};                             \
        bool ok_ = fn((msg), &out_);                                                         \
        if (ok_) *(ok_list) = out_.msgs;                                                     \
        else {                                                                               \
            free(out_.msgs.ptr);                                                             \
            *(err_out) = out_.err;                                                           \
        }                                                                                    \
        ok_;                                                                                 \
    })

#ifdef WASMILL_WORLD_MIDDLEWARE

/* Runs the rest of the chain on `msg` (taken): its outputs are added to `out`. On failure
 * the chain's error is `out`'s and false is returned. */
static inline bool wasmill_next(wasmill_msg_t msg, wasmill_out_t *out) {
    middleware_list_own_message_t got;
    middleware_handler_error_t err;
    if (!middleware_next(msg, &got, &err)) {
        for (size_t i = 0; i < out->msgs.len; i++) wasmill_drop(out->msgs.ptr[i]);
        out->msgs.len = 0;
        out->err = err;
        return false;
    }
    for (size_t i = 0; i < got.len; i++) wasmill_emit(out, got.ptr[i]);
    free(got.ptr);
    return true;
}

/* Declares `fn` (bool fn(wasmill_msg_t, wasmill_out_t *)) as the middleware. */
#define WASMILL_MIDDLEWARE(fn)                                                               \
    bool exports_middleware_handle(middleware_own_message_t msg,                             \
                                   middleware_list_own_message_t *ret,                       \
                                   middleware_handler_error_t *err) {                        \
        return WASMILL_RUN_(fn, msg, ret, err);                                              \
    }

#else

/* Declares `fn` (bool fn(wasmill_msg_t, wasmill_out_t *)) as the handler, for `handle` and
 * for each message of `handle-batch`. */
#define WASMILL_HANDLER(fn)                                                                  \
    bool exports_handler_handle(handler_own_message_t msg, handler_list_own_message_t *ret,  \
                                handler_handler_error_t *err) {                              \
        return WASMILL_RUN_(fn, msg, ret, err);                                              \
    }                                                                                        \
    void exports_handler_handle_batch(handler_list_own_message_t *msgs,                      \
                                      handler_list_result_list_own_message_handler_error_t   \
                                          *ret) {                                            \
        ret->len = msgs->len;                                                                \
        ret->ptr = malloc((msgs->len ? msgs->len : 1) * sizeof *ret->ptr);                   \
        if (!ret->ptr) abort();                                                              \
        for (size_t i = 0; i < msgs->len; i++) {                                             \
            handler_result_list_own_message_handler_error_t *r = &ret->ptr[i];               \
            r->is_err = !WASMILL_RUN_(fn, msgs->ptr[i], &r->val.ok, &r->val.err);            \
        }                                                                                    \
        free(msgs->ptr);                                                                     \
    }

#endif

#endif /* WASMILL_H */
