/* The bundled leaky demo: a "server" that handles requests, keeps some memory
 * forever by mistake, caches a bounded amount, and frees the rest. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct session { char *buf; size_t len; };

struct session *history[1 << 16]; /* global: the compiler must keep the mallocs */
static size_t nhistory;
char *cache[32];

/* Leak: every request's session is kept in a history nobody reads. */
__attribute__((noinline)) static void remember_session(size_t id) {
    struct session *s = malloc(sizeof *s);
    s->len = 1024;
    s->buf = malloc(s->len);
    memset(s->buf, (int)id, s->len);
    history[nhistory++ % (1 << 16)] = s;
}

/* Leak: a reply buffer never freed. Its only pointer is gone when the
 * function returns: nothing points to it any more (definitely lost). */
__attribute__((noinline)) static void send_reply(size_t id) {
    char *reply = malloc(200);
    memset(reply, 'r', 200);
    reply[0] = (char)id;
    if (write(-1, reply, 200) < 0) { /* "sent" nowhere */
    }
}

/* Not a leak: a bounded cache that replaces old entries. */
__attribute__((noinline)) static void cache_put(size_t id) {
    size_t slot = id % 32;
    free(cache[slot]);
    cache[slot] = malloc(4096);
    memset(cache[slot], 1, 4096);
}

/* Not a leak: temporary buffer. */
__attribute__((noinline)) static void parse_request(size_t id) {
    char *tmp = calloc(1, 512);
    tmp[0] = (char)id;
    free(tmp);
}

/* Leak: a mapping for a "big request" is never unmapped. */
__attribute__((noinline)) static void map_big_request(void) {
    void *p = mmap(NULL, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(p, 1, 64 * 1024);
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 8;
    for (size_t id = 0; id < (size_t)seconds * 20; id++) {
        parse_request(id);
        cache_put(id);
        remember_session(id);
        send_reply(id);
        if (id % 20 == 0) map_big_request();
        usleep(50 * 1000);
    }
    return 0;
}
