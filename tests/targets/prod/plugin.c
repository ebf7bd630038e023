/* A plugin loaded with dlopen after its host has run a while (built -O2
 * -shared -fPIC): it leaks three calls deep inside the library. */
#include <stdlib.h>
#include <string.h>

static void *cache[4096];
static int cached;

__attribute__((noinline, noclone)) static char *make_entry(int i) {
    char *e = malloc(48);
    memset(e, i, 48);
    return e;
}

__attribute__((noinline, noclone)) static int remember_entry(int i) {
    char *e = make_entry(i);
    cache[cached++ & 4095] = e;
    return e[7] + 1;
}

/* The plugin's entry point: what the host calls through dlsym. */
__attribute__((noinline, noclone)) int plugin_handle(int i) {
    int n = remember_entry(i);
    return n * 2;
}
