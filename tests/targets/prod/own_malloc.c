/* A program with a malloc of its own (a bump allocator) whose first
 * instructions move its argument away before any instruction the kernel
 * emulates, so it can only be probed at its entry, single-stepped:
 *   own_malloc ROUNDS    keeps ROUNDS blocks of 200 bytes (keep_own). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noclone))

static char pool[1 << 22];
static size_t used;

/* rdi is overwritten first thing and the size kept only rounded up: no
 * later point has it in any register. */
NOINLINE void *malloc(size_t n) {
    size_t padded;
    __asm__ volatile("lea 15(%%rdi), %0\n\txor %%edi, %%edi" : "=r"(padded) : : "rdi");
    size_t size = padded - 15;
    if (used + size + 16 > sizeof pool)
        return NULL;
    void *p = pool + used;
    used += (size + 15) & ~(size_t)15;
    (void)n;
    return p;
}
void free(void *p) { __asm__ volatile("" : : "r"(p)); }
void *calloc(size_t n, size_t size) {
    void *p = malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}
void *realloc(void *old, size_t size) {
    void *p = malloc(size);
    if (p && old)
        memcpy(p, old, size);
    return p;
}

NOINLINE void *keep_own(int round) {
    char *p = malloc(200);
    __asm__ volatile("" : : "r"(p) : "memory");
    p[0] = (char)round;
    return p;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 0;
    static void *kept[4096];
    if (rounds <= 0 || rounds > 4096) {
        fprintf(stderr, "usage: own_malloc ROUNDS (1 to 4096)\n");
        return 2;
    }
    for (int i = 0; i < rounds; i++)
        kept[i] = keep_own(i);
    printf("done %p\n", kept[rounds - 1]);
    return 0;
}
