/*
 * origin/io.cpp - pibl-origin's socket I/O: whole sends (send_all,
 * writev_all), the per-connection output buffer (out_put, out_flush,
 * out_digits), and the input side: the read buffer, lines and request heads
 * (read_head), under the socket's receive timeout. Blocking calls only.
 * Limits: MAX_HEAD_BYTES of buffered input, IO_BUF_BYTES of output.
 */
#include "origin.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

static char g_digits[IO_BUF_BYTES + 10];             /* "0123456789" repeated */

void io_init(void)
{
    for (size_t i = 0; i < sizeof g_digits; i++)
        g_digits[i] = (char)('0' + i % 10);
}

/* ---------------------------------------------------------------- output */

int send_all(int fd, const void *buf, size_t len)
{
    const char *p = (const char *)buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int writev_all(int fd, struct iovec *iov, int n_iov)
{
    while (n_iov > 0) {
        ssize_t n = writev(fd, iov, n_iov);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n_iov > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            n_iov--;
        }
        if (n_iov > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

int out_flush(struct conn *c)
{
    if (c->out_len == 0)
        return 0;
    size_t len = c->out_len;
    c->out_len = 0;
    return send_all(c->fd, c->out, len);
}

int out_put(struct conn *c, const void *buf, size_t len)
{
    if (c->out_len + len > sizeof c->out) {
        if (out_flush(c) == -1)
            return -1;
        if (len >= sizeof c->out)
            return send_all(c->fd, buf, len);
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    return 0;
}

int out_digits(struct conn *c, unsigned long long offset, unsigned long long count)
{
    while (count > 0) {
        size_t n = count < IO_BUF_BYTES ? (size_t)count : IO_BUF_BYTES;
        if (out_put(c, g_digits + offset % 10, n) == -1)
            return -1;
        offset += n;
        count -= n;
    }
    return 0;
}

/* ---------------------------------------------------------------- input */

ssize_t recv_retry(int fd, void *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n == -1 && errno == EINTR)
            continue;
        return n;
    }
}

/*
 * Read more bytes into c->rbuf, compacting it first when needed. Returns the
 * byte count, 0 at EOF, -1 on error, -2 when the buffer is full.
 */
static ssize_t conn_fill(struct conn *c)
{
    if (c->r_start == c->r_end) {
        c->r_start = 0;
        c->r_end = 0;
    } else if (c->r_end == sizeof c->rbuf && c->r_start > 0) {
        memmove(c->rbuf, c->rbuf + c->r_start, c->r_end - c->r_start);
        c->r_end -= c->r_start;
        c->r_start = 0;
    }
    if (c->r_end == sizeof c->rbuf)
        return -2;
    ssize_t n = recv_retry(c->fd, c->rbuf + c->r_end, sizeof c->rbuf - c->r_end);
    if (n > 0)
        c->r_end += (size_t)n;
    return n;
}

ssize_t conn_read_some(struct conn *c, char *buf, size_t cap)
{
    size_t avail = c->r_end - c->r_start;

    if (avail > 0) {
        size_t n = avail < cap ? avail : cap;
        memcpy(buf, c->rbuf + c->r_start, n);
        c->r_start += n;
        return (ssize_t)n;
    }
    return recv_retry(c->fd, buf, cap);
}

int conn_read_line(struct conn *c, struct str_view *line)
{
    for (;;) {
        const char *start = c->rbuf + c->r_start;
        size_t avail = c->r_end - c->r_start;
        const char *lf = (const char *)memchr(start, '\n', avail);
        if (lf != NULL) {
            size_t len = (size_t)(lf - start);
            c->r_start += len + 1;
            if (len > 0 && start[len - 1] == '\r')
                len--;
            line->ptr = start;
            line->len = len;
            return len > MAX_LINE_BYTES ? -1 : 0;
        }
        if (avail > MAX_LINE_BYTES || conn_fill(c) <= 0)
            return -1;
    }
}

/*
 * Find the end of a head in buf[0..len): the byte after the empty line.
 * *scan is where to resume, so each call only looks at new bytes (a
 * slow-sender defence). Returns the head length, or 0 if not complete yet.
 */
static size_t find_head_end(const char *buf, size_t len, size_t *scan)
{
    for (size_t i = *scan; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 >= len) {
            *scan = i;
            return 0;
        }
        if (buf[i + 1] == '\n')
            return i + 2;
        if (buf[i + 1] != '\r')
            continue;
        if (i + 2 >= len) {
            *scan = i;
            return 0;
        }
        if (buf[i + 2] == '\n')
            return i + 3;
    }
    *scan = len;
    return 0;
}

/* Drop empty lines before a request line (RFC 9112 2.2), one memmove. */
static void skip_leading_blank_lines(struct conn *c)
{
    size_t skip = 0;

    while (skip < c->r_end) {
        if (c->rbuf[skip] == '\n')
            skip += 1;
        else if (c->rbuf[skip] == '\r' && skip + 1 < c->r_end && c->rbuf[skip + 1] == '\n')
            skip += 2;
        else
            break;
    }
    if (skip > 0) {
        memmove(c->rbuf, c->rbuf + skip, c->r_end - skip);
        c->r_end -= skip;
    }
}

int read_head(struct conn *c, size_t *head_len)
{
    size_t scan = 0;

    if (c->r_start > 0) {
        memmove(c->rbuf, c->rbuf + c->r_start, c->r_end - c->r_start);
        c->r_end -= c->r_start;
        c->r_start = 0;
    }
    for (;;) {
        size_t before = c->r_end;
        skip_leading_blank_lines(c);
        if (c->r_end != before)
            scan = 0;
        size_t end = find_head_end(c->rbuf, c->r_end, &scan);
        if (end > 0) {
            memcpy(c->head, c->rbuf, end);
            c->r_start = end;
            *head_len = end;
            return 1;
        }
        if (c->r_end == sizeof c->rbuf)
            return -2;
        ssize_t n = recv_retry(c->fd, c->rbuf + c->r_end, sizeof c->rbuf - c->r_end);
        if (n == 0)
            return c->r_end == 0 ? 0 : -1;
        if (n == -1)
            return -1;
        c->r_end += (size_t)n;
    }
}
