/*
 * origin/ws.cpp - /_ws, a WebSocket echo (RFC 6455: the handshake with its
 * own SHA-1 and base64, frames in and out), and /_sse, a stream of
 * server-sent events written one at a time: what a test needs to see
 * tunnels and streams pass through a proxy.
 * Limits: ECHO_MAX_BODY per WebSocket payload (1009 past it).
 */
#include "origin.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- websocket */

/* Rotate left, for SHA-1. */
static uint32_t rol32(uint32_t v, int n)
{
    return (v << n) | (v >> (32 - n));
}

/*
 * SHA-1 (FIPS 180-4) of msg[0..len): only for Sec-WebSocket-Accept, which
 * RFC 6455 4.2.2 defines with it. Writes the 20-byte digest to out.
 */
static void sha1(const unsigned char *msg, size_t len, unsigned char out[20])
{
    uint32_t h[5] = { 0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u };
    uint64_t bits = (uint64_t)len * 8;
    size_t total = (len + 9 + 63) / 64 * 64;   /* message, 0x80, zeros, 64-bit length */

    for (size_t off = 0; off < total; off += 64) {
        unsigned char block[64];
        uint32_t w[80];
        for (size_t i = 0; i < 64; i++) {
            size_t k = off + i;
            block[i] = k < len ? msg[k] : k == len ? 0x80 : 0;
        }
        if (off + 64 == total)
            for (int i = 0; i < 8; i++)
                block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
                   (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], cc = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) {
                f = (b & cc) | (~b & d);
                k = 0x5A827999u;
            } else if (i < 40) {
                f = b ^ cc ^ d;
                k = 0x6ED9EBA1u;
            } else if (i < 60) {
                f = (b & cc) | (b & d) | (cc & d);
                k = 0x8F1BBCDCu;
            } else {
                f = b ^ cc ^ d;
                k = 0xCA62C1D6u;
            }
            uint32_t t = rol32(a, 5) + f + e + k + w[i];
            e = d;
            d = cc;
            cc = rol32(b, 30);
            b = a;
            a = t;
        }
        h[0] += a;
        h[1] += b;
        h[2] += cc;
        h[3] += d;
        h[4] += e;
    }
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

/* Base64 (RFC 4648 4) of in[0..len) into out, NUL-terminated; out needs
 * 4 * ((len + 2) / 3) + 1 bytes. */
static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = i + 1 < len ? abc[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Read exactly len bytes (buffered ones first). Returns 0, or -1 at EOF or error. */
static int read_exact(struct conn *c, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = conn_read_some(c, (char *)buf, len);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Send one unmasked frame (server to client, RFC 6455 5.2): first is the
 * FIN bit and opcode byte. Returns 0 or -1.
 */
static int ws_send_frame(struct conn *c, int first, const void *data, uint64_t len)
{
    unsigned char head[10];
    size_t hl = 2;

    head[0] = (unsigned char)first;
    if (len < 126) {
        head[1] = (unsigned char)len;
    } else if (len < 65536) {
        head[1] = 126;
        head[2] = (unsigned char)(len >> 8);
        head[3] = (unsigned char)len;
        hl = 4;
    } else {
        head[1] = 127;
        for (int i = 0; i < 8; i++)
            head[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        hl = 10;
    }
    if (out_put(c, head, hl) == -1 || out_put(c, data, (size_t)len) == -1)
        return -1;
    return out_flush(c);
}

/* A whole message in one frame. Returns 0 or -1. */
static int ws_send(struct conn *c, int opcode, const void *data, size_t len)
{
    return ws_send_frame(c, 0x80 | opcode, data, len);
}

int serve_ws(struct conn *c)
{
    struct request *rq = &c->rq;
    struct str_view key = header_get(rq, "sec-websocket-key");
    struct str_view version = header_get(rq, "sec-websocket-version");
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned long long after_eof;
    unsigned char digest[20], accept_in[64 + sizeof guid];
    char accept[32], extra[EXTRA_HEAD_BYTES], hello[MAX_NAME_BYTES + 16];

    if (query_u64(rq, "after_eof", 0, 1, &after_eof) == -1)
        return send_error(c, 400);
    rq->keep_alive = 0;
    if (!view_eq(rq->method, "GET") || !header_has_token(rq, "upgrade", "websocket") ||
        !header_has_token(rq, "connection", "upgrade"))
        return send_simple(c, 426, "Upgrade: websocket\r\nConnection: Upgrade\r\n",
                           "426 a WebSocket handshake is expected here\n", 43);
    if (!view_eq(version, "13"))
        return send_simple(c, 426, "Sec-WebSocket-Version: 13\r\n", "426 version 13 only\n", 20);
    if (key.len != 24)
        return send_error(c, 400);
    memcpy(accept_in, key.ptr, key.len);
    memcpy(accept_in + key.len, guid, sizeof guid - 1);
    sha1(accept_in, key.len + sizeof guid - 1, digest);
    base64(digest, sizeof digest, accept);
    int n = snprintf(extra, sizeof extra,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\nX-Backend: %s\r\n\r\n", accept, g_cfg.name);
    if (n < 0 || (size_t)n >= sizeof extra || out_put(c, extra, (size_t)n) == -1)
        return -1;
    n = snprintf(hello, sizeof hello, "hello from %s", g_cfg.name);
    if (ws_send(c, 0x1, hello, (size_t)n) == -1)
        return -1;

    unsigned char *payload = (unsigned char *)malloc(ECHO_MAX_BODY);
    if (payload == NULL)
        return -1;
    for (;;) {
        unsigned char h[2], ext[8], mask[4];
        if (read_exact(c, h, 2) == -1) {
            if (after_eof) {
                n = snprintf(hello, sizeof hello, "bye from %s", g_cfg.name);
                ws_send(c, 0x1, hello, (size_t)n);
            }
            break;
        }
        int opcode = h[0] & 0x0f, fin = h[0] & 0x80;
        uint64_t len = h[1] & 0x7f;
        if (len == 126 || len == 127) {
            size_t el = len == 126 ? 2 : 8;
            if (read_exact(c, ext, el) == -1)
                break;
            len = 0;
            for (size_t i = 0; i < el; i++)
                len = len << 8 | ext[i];
        }
        if (!(h[1] & 0x80)) {                  /* unmasked from a client: 1002 */
            ws_send(c, 0x8, "\x03\xea", 2);
            break;
        }
        if (len > ECHO_MAX_BODY) {             /* too big: 1009 */
            ws_send(c, 0x8, "\x03\xf1", 2);
            break;
        }
        if (read_exact(c, mask, 4) == -1 || read_exact(c, payload, (size_t)len) == -1)
            break;
        for (uint64_t i = 0; i < len; i++)
            payload[i] ^= mask[i % 4];
        if (opcode == 0x8) {                   /* close: answer it, then end */
            ws_send(c, 0x8, payload, (size_t)(len >= 2 ? 2 : 0));
            break;
        }
        if (opcode == 0x9) {
            if (ws_send(c, 0xA, payload, (size_t)len) == -1)
                break;
            continue;
        }
        if (opcode == 0xA)
            continue;
        /* Echo text, binary and continuation frames as they came. */
        if (ws_send_frame(c, fin | opcode, payload, len) == -1)
            break;
    }
    free(payload);
    return -1;
}

int serve_sse(struct conn *c)
{
    struct request *rq = &c->rq;
    unsigned long long n_events, ms;
    char ev[MAX_NAME_BYTES + 64], line[32];

    if (query_u64(rq, "n", DEFAULT_CHUNKS, MAX_CHUNKS, &n_events) == -1 ||
        query_u64(rq, "ms", 100, MAX_SLOW_MS, &ms) == -1)
        return send_error(c, 400);
    if (rq->minor == 0)
        rq->keep_alive = 0;
    if (send_head(c, 200, "Content-Type: text/event-stream\r\nCache-Control: no-store\r\n", -1,
                  rq->minor >= 1) == -1 || out_flush(c) == -1)
        return -1;
    if (rq->is_head)
        return 0;
    for (unsigned long long i = 0; i < n_events; i++) {
        if (i > 0) {
            struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
            while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
                ;
        }
        int len = snprintf(ev, sizeof ev, "data: event %llu from %s\n\n", i + 1, g_cfg.name);
        int ll = snprintf(line, sizeof line, "%x\r\n", len);
        if ((rq->minor >= 1 && out_put(c, line, (size_t)ll) == -1) || out_put(c, ev, (size_t)len) == -1 ||
            (rq->minor >= 1 && out_put(c, "\r\n", 2) == -1) || out_flush(c) == -1)
            return -1;
    }
    if (rq->minor >= 1 && out_put(c, "0\r\n\r\n", 5) == -1)
        return -1;
    return out_flush(c);
}
