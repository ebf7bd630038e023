/* One leak and much churn through whichever allocator the program is linked
 * with (or has preloaded), built -O2 like production code:
 *   churn ROUNDS
 * Each round keeps one KEEP-byte block (keep_block: the leak) and, in churn,
 * makes and gives back CHURN blocks of three kinds: malloc'd, calloc'd then
 * realloc'd, and a free(NULL). Built with -DMIMALLOC_API it calls mimalloc's
 * own mi_* functions instead (linked against libmimalloc). */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline, noclone))
#define MAX_ROUNDS 4096
#define KEEP 3000
#define CHURN 50

#ifdef MIMALLOC_API
void *mi_malloc(size_t size);
void *mi_calloc(size_t n, size_t size);
void *mi_realloc(void *p, size_t size);
void mi_free(void *p);
#define MALLOC mi_malloc
#define CALLOC mi_calloc
#define REALLOC mi_realloc
#define FREE mi_free
#else
#define MALLOC malloc
#define CALLOC calloc
#define REALLOC realloc
#define FREE free
#endif

static void *kept[MAX_ROUNDS];

/* Keeps the compiler from eliding a malloc/free pair it can see through. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

NOINLINE void *keep_block(int round) {
    char *p = MALLOC(KEEP);
    p[0] = (char)round;
    return p;
}

NOINLINE size_t churn(int round) {
    size_t sum = 0;
    for (int j = 0; j < CHURN; j++) {
        char *p = MALLOC(16 + (round * 7 + j) % 2000);
        char *q = CALLOC(1, 100);
        char *r = REALLOC(q, 300 + j);
        ESCAPE(p);
        ESCAPE(r);
        p[0] = r[0] = 1;
        sum += (size_t)p[0] + (size_t)r[0];
        FREE(p);
        FREE(r);
        FREE(NULL);
    }
    return sum;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 0;
    if (rounds <= 0 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: churn ROUNDS (1 to %d)\n", MAX_ROUNDS);
        return 2;
    }
    size_t sum = 0;
    for (int i = 0; i < rounds; i++) {
        kept[i] = keep_block(i);
        sum += churn(i);
    }
    printf("done %zu\n", sum);
    return 0;
}
