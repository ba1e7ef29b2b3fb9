/*
 * httpdate.cpp - HTTP-dates (RFC 9110 5.6.7): http_parse_date reads
 * IMF-fixdate, RFC 850 (two-digit years placed within 50 years of now)
 * and asctime; http_format_date and http_put_date write the IMF-fixdate
 * of the Date field. See httpdate.h.
 */
#include "httpdate.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* Two or four digits at p into *v (for dates). Returns 0 or -1. */
static int
date_digits(const char *p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        *v = *v * 10 + (p[i] - '0');
    }
    return 0;
}

/* "Jan".."Dec" at p (case-sensitive, as RFC 9110 5.6.7) to 0..11, or -1. */
static int
date_month(const char *p)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int m = 0; m < 12; m++)
        if (memcmp(p, months + 3 * m, 3) == 0)
            return m;
    return -1;
}

/* "HH:MM:SS" at p into tm. Returns 0 or -1. */
static int
date_time(const char *p, struct tm *tm)
{
    if (p[2] != ':' || p[5] != ':' || date_digits(p, 2, &tm->tm_hour) == -1 ||
        date_digits(p + 3, 2, &tm->tm_min) == -1 || date_digits(p + 6, 2, &tm->tm_sec) == -1)
        return -1;
    return tm->tm_hour > 23 || tm->tm_min > 59 || tm->tm_sec > 60 ? -1 : 0;
}

/* The day name before the comma or blank: 0..6 for "Sun".."Sat" (or the
 * long names with long set), -1 when it is none. */
static int
date_weekday(const char *p, size_t len, int is_long)
{
    static const char *const names[] = { "Sunday", "Monday", "Tuesday", "Wednesday",
        "Thursday", "Friday", "Saturday" };
    for (int d = 0; d < 7; d++) {
        size_t nl = is_long ? strlen(names[d]) : 3;
        if (len == nl && memcmp(p, names[d], nl) == 0)
            return d;
    }
    return -1;
}

time_t
http_parse_date(const char *v, size_t len)
{
    struct tm tm;
    const char *comma = (const char *)memchr(v, ',', len);
    int wday;

    memset(&tm, 0, sizeof tm);
    if (len == 29 && comma == v + 3) {
        /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
        if ((wday = date_weekday(v, 3, 0)) == -1 || v[4] != ' ' || v[7] != ' ' ||
            v[11] != ' ' || v[16] != ' ' || v[25] != ' ' || memcmp(v + 26, "GMT", 3) != 0 ||
            date_digits(v + 5, 2, &tm.tm_mday) == -1 || (tm.tm_mon = date_month(v + 8)) == -1 ||
            date_digits(v + 12, 4, &tm.tm_year) == -1 || date_time(v + 17, &tm) == -1)
            return -1;
        tm.tm_year -= 1900;
    } else if (comma != NULL && comma > v + 5 && (size_t)(v + len - comma) == 24) {
        /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" */
        const char *p = comma + 1;
        if ((wday = date_weekday(v, (size_t)(comma - v), 1)) == -1 || p[0] != ' ' ||
            p[3] != '-' || p[7] != '-' || p[10] != ' ' || p[19] != ' ' ||
            memcmp(p + 20, "GMT", 3) != 0 || date_digits(p + 1, 2, &tm.tm_mday) == -1 ||
            (tm.tm_mon = date_month(p + 4)) == -1 || date_digits(p + 8, 2, &tm.tm_year) == -1 ||
            date_time(p + 11, &tm) == -1)
            return -1;
        /* Two-digit year: the one within the last 100 years that is not
         * more than 50 years ahead of now (RFC 9110 5.6.7). */
        time_t now = time(NULL);
        struct tm nt;
        gmtime_r(&now, &nt);
        int century = (nt.tm_year + 1900) / 100 * 100;
        int year = century + tm.tm_year;
        if (year > nt.tm_year + 1900 + 50)
            year -= 100;
        tm.tm_year = year - 1900;
    } else if (len == 24 && comma == NULL) {
        /* asctime: "Sun Nov  6 08:49:37 1994" */
        if ((wday = date_weekday(v, 3, 0)) == -1 || v[3] != ' ' || v[7] != ' ' ||
            v[10] != ' ' || v[19] != ' ' || (tm.tm_mon = date_month(v + 4)) == -1 ||
            date_time(v + 11, &tm) == -1 || date_digits(v + 20, 4, &tm.tm_year) == -1)
            return -1;
        if (v[8] == ' ' ? date_digits(v + 9, 1, &tm.tm_mday) : date_digits(v + 8, 2, &tm.tm_mday))
            return -1;
        tm.tm_year -= 1900;
    } else {
        return -1;
    }
    /* Before 1970 would be a negative time_t, and -1 means "not a date". */
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_year < 70)
        return -1;
    (void)wday;                                 /* named, not checked against the date */
    return timegm(&tm);
}

size_t
http_format_date(time_t t, char out[HTTP_DATE_LEN + 1])
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        out[0] = '\0';
        return 0;
    }
    snprintf(out, HTTP_DATE_LEN + 1, "%.3s, %02d %.3s %04d %02d:%02d:%02d GMT",
        days + 3 * tm.tm_wday, tm.tm_mday, months + 3 * tm.tm_mon, tm.tm_year + 1900,
        tm.tm_hour, tm.tm_min, tm.tm_sec);
    return HTTP_DATE_LEN;
}

void
http_put_date(struct http_builder *b, time_t t)
{
    /* One formatting per second and thread: most answers of a second share it. */
    static __thread time_t last;
    static __thread int have;
    static __thread char text[HTTP_DATE_LEN + 1];

    if (!have || t != last) {
        char fresh[HTTP_DATE_LEN + 1];
        if (http_format_date(t, fresh) == 0)
            return;
        memcpy(text, fresh, sizeof text);
        last = t;
        have = 1;
    }
    http_puts(b, "Date: ");
    http_put(b, text, HTTP_DATE_LEN);
    http_put(b, "\r\n", 2);
}
