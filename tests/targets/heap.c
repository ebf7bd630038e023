/* Known leaks from known functions next to distractors that free.
 * Built with -O0 so the compiler keeps every allocation. Expected outstanding
 * amounts are asserted by tests/heap.rs. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
static void *keep[64];
static int nkeep;

void leak_malloc(void) { for (int i = 0; i < 10; i++) keep[nkeep++] = malloc(1000); }      /* 10000 B, 10 */
void leak_calloc(void) { for (int i = 0; i < 5; i++) keep[nkeep++] = calloc(10, 100); }     /* 5000 B, 5 */
void leak_realloc(void) {                                                                   /* 8192 B, 1 */
    char *p = NULL;
    for (size_t n = 1024; n <= 8192; n *= 2) p = realloc(p, n);
    keep[nkeep++] = p;
}
void leak_posix_memalign(void) {                                                            /* 6144 B, 3 */
    for (int i = 0; i < 3; i++) { void *p; if (posix_memalign(&p, 64, 2048) == 0) keep[nkeep++] = p; }
}
void leak_aligned_alloc(void) { for (int i = 0; i < 2; i++) keep[nkeep++] = aligned_alloc(64, 4096); } /* 8192 B, 2 */
void churn(void) {                                                                          /* 0 B */
    for (int i = 0; i < 100; i++) { char *p = malloc(300); p[0] = 1; free(p); }
    char *q = calloc(4, 50); free(q);
    free(NULL);
}
void map_keep(void) { for (int i = 0; i < 3; i++) keep[nkeep++] = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); } /* 12 pages, 3 */
void map_partial(void) {                                                                    /* 6 pages, 2 */
    char *p = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p + 3 * PAGE, 2 * PAGE);
}
void map_grow(void) {                                                                       /* 6 pages, 1 */
    char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    keep[nkeep++] = mremap(p, 2 * PAGE, 6 * PAGE, MREMAP_MAYMOVE);
}
void map_free(void) {                                                                       /* 0 pages */
    char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p, 4 * PAGE);
}

int main(int argc, char **argv) {
    /* With an argument: wait that long first (for --pid attach), then leak. */
    if (argc > 1) usleep(atoi(argv[1]) * 1000);
    leak_malloc(); leak_calloc(); leak_realloc(); leak_posix_memalign(); leak_aligned_alloc();
    churn();
    map_keep(); map_partial(); map_grow(); map_free();
    printf("ready %d\n", nkeep);
    fflush(stdout);
    usleep(argc > 2 ? atoi(argv[2]) * 1000 : 1500 * 1000);
    return 0;
}
