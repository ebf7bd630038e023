/* A program with its own malloc (as jemalloc does at its first call) that
 * opens a file inside the allocator: the stack of that open passes through
 * malloc while leaktrace's return probe on malloc is pending, whose trampoline
 * stands in the return address slot.
 *   inner_open ROUNDS DELAY_MS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static int opened[4096];
static int nopened;
static int want_open;

/* Opens (and keeps) a descriptor when asked: a configuration read, say. */
__attribute__((noinline, noclone)) static void read_tuning(void) {
    opened[nopened++ & 4095] = open("/dev/null", O_RDONLY);
}

/* Not inlined into its callers, as an allocator in a library of its own is not. */
__attribute__((noinline)) void *malloc(size_t n) {
    if (want_open) {
        want_open = 0;
        read_tuning();
    }
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size) { return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

static void *kept[4096];
static int nkept;

__attribute__((noinline, noclone)) static void *make_buffer(int i) {
    want_open = 1;
    char *b = malloc(64);
    memset(b, i, 64);
    return b;
}

__attribute__((noinline, noclone)) static int fill_buffers(int i) {
    kept[nkept++ & 4095] = make_buffer(i);
    return nkept;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    int delay = argc > 2 ? atoi(argv[2]) : 10;
    int sum = 0;
    for (int i = 0; i < rounds; i++) {
        sum += fill_buffers(i);
        usleep(delay * 1000);
    }
    return sum == 0;
}
