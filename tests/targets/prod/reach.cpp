// C++ heap blocks in every reachability class, for leaktrace's scan and
// LeakSanitizer (the same source built with -fsanitize=leak) to classify
// alike. Each kind of block comes from its own function.
//   reach-cpp [CODE]   makes them all, then exits with CODE (default 0)
// Classes:
//   make_session    unreachable: a unique_ptr released and dropped (3)
//   make_buffer     unreachable: new[] whose pointer is overwritten (2)
//   make_node       a std::list-like chain whose head is dropped: 1
//                   unreachable, 4 indirect
//   make_name       reachable: std::string objects (and their heap buffers)
//                   held by a global vector (3 + 3), the vector's own buffer too
//   make_entry      reachable: in a global std::map (2 objects, and its nodes)
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#define NOINLINE __attribute__((noinline, noclone))

struct Session {
    int id;
    char scratch[60];
};

struct Node {
    Node *next;
    long payload[5];
};

std::vector<std::string *> names;
std::map<int, Session *> entries;
void *volatile sink;

NOINLINE Session *make_session(int id) {
    auto s = std::make_unique<Session>();
    s->id = id;
    std::memset(s->scratch, 1, sizeof s->scratch);
    return s.release();
}

NOINLINE char *make_buffer(std::size_t n) {
    char *b = new char[n];
    std::memset(b, 2, n);
    return b;
}

NOINLINE Node *make_node(Node *next) {
    return new Node{next, {3, 3, 3, 3, 3}};
}

NOINLINE std::string *make_name(int i) {
    return new std::string(40, static_cast<char>('a' + i));
}

NOINLINE Session *make_entry(int id) {
    auto *s = new Session{};
    s->id = id;
    return s;
}

NOINLINE static void reachable() {
    for (int i = 0; i < 3; i++)
        names.push_back(make_name(i));
    for (int i = 0; i < 2; i++)
        entries[i] = make_entry(i);
}

NOINLINE static void lost() {
    for (int i = 0; i < 3; i++)
        sink = make_session(i);
    for (int i = 0; i < 2; i++)
        sink = make_buffer(100);
    Node *head = nullptr;
    for (int i = 0; i < 5; i++)
        head = make_node(head);
    sink = head;
    sink = nullptr;
}

// Zeroes the stack below the caller, where lost()'s frame was.
NOINLINE static void scrub() {
    char pad[8192];
    explicit_bzero(pad, sizeof pad);
}

int main(int argc, char **argv) {
    reachable();
    lost();
    scrub();
    return argc > 1 ? std::atoi(argv[1]) : 0;
}
