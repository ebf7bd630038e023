// An HTTP service as production builds them: no net/http/pprof, so the
// runtime starts with heap sampling off. Its handlers are a mix a leak hides
// in: one appends every request's record to a global slice forever; the others
// hold memory that is not a leak.
//
//	service
//
// Listens on 127.0.0.1 (a free port) and prints "ready ADDR". With
// MEMPROFILERATE=N in its environment it sets runtime.MemProfileRate itself,
// as a program sampling its own heap does. Every reply is a
// checksum of data derived from the request's n alone: the same request gets
// the same reply, traced or not.
//
//	GET /append?n=N   a 4 KiB record kept in a global slice (the leak)
//	GET /cache?n=N    a bounded cache of 256 entries of 4 KiB, evicting at random
//	GET /pool?n=N     a 64 KiB buffer from a sync.Pool, put back
//	GET /garbage?n=N  2 MiB made, filled and dropped
//	GET /work?n=N     a job for a fixed pool of 8 workers started at start-up
package main

import (
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
)

const recordSize = 4096

var (
	recordsMu sync.Mutex
	records   [][]byte

	cacheMu sync.Mutex
	cache   = map[int][]byte{}

	pool = sync.Pool{New: func() any { return make([]byte, 64<<10) }}

	jobs = make(chan job)
)

type job struct {
	n     int
	reply chan uint64
}

// fill writes bytes derived from n into b and returns their checksum.
func fill(b []byte, n int) uint64 {
	x := uint64(n)*0x9e3779b97f4a7c15 + 1
	var sum uint64
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
		sum = sum*31 + uint64(b[i])
	}
	return sum
}

//go:noinline
func newRecord(n int) []byte {
	return make([]byte, recordSize)
}

func appendHandler(w http.ResponseWriter, r *http.Request) {
	n := arg(r)
	rec := newRecord(n)
	sum := fill(rec, n)
	recordsMu.Lock()
	records = append(records, rec)
	recordsMu.Unlock()
	fmt.Fprintf(w, "%d\n", sum)
}

//go:noinline
func newCacheEntry() []byte {
	return make([]byte, recordSize)
}

func cacheHandler(w http.ResponseWriter, r *http.Request) {
	n := arg(r)
	key := n % 1024
	cacheMu.Lock()
	defer cacheMu.Unlock()
	entry, ok := cache[key]
	if !ok {
		if len(cache) >= 256 {
			for k := range cache {
				delete(cache, k)
				break
			}
		}
		entry = newCacheEntry()
		fill(entry, key)
		cache[key] = entry
	}
	var sum uint64
	for _, b := range entry {
		sum = sum*31 + uint64(b)
	}
	fmt.Fprintf(w, "%d\n", sum)
}

func poolHandler(w http.ResponseWriter, r *http.Request) {
	n := arg(r)
	buf := pool.Get().([]byte)
	sum := fill(buf, n)
	pool.Put(buf)
	fmt.Fprintf(w, "%d\n", sum)
}

//go:noinline
func newGarbage() []byte {
	return make([]byte, 2<<20)
}

func garbageHandler(w http.ResponseWriter, r *http.Request) {
	n := arg(r)
	g := newGarbage()
	sum := fill(g[:recordSize], n)
	// Touch every page, as a real buffer would be.
	for i := 0; i < len(g); i += 4096 {
		g[i] = byte(i)
	}
	fmt.Fprintf(w, "%d\n", sum)
}

//go:noinline
func worker() {
	for j := range jobs {
		scratch := make([]byte, 1024+rand.Intn(1024))
		j.reply <- fill(scratch[:1024], j.n)
	}
}

func workHandler(w http.ResponseWriter, r *http.Request) {
	reply := make(chan uint64)
	jobs <- job{n: arg(r), reply: reply}
	fmt.Fprintf(w, "%d\n", <-reply)
}

func arg(r *http.Request) int {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	return n
}

func main() {
	if rate, err := strconv.Atoi(os.Getenv("MEMPROFILERATE")); err == nil {
		runtime.MemProfileRate = rate
	}
	for i := 0; i < 8; i++ {
		go worker()
	}
	http.HandleFunc("/append", appendHandler)
	http.HandleFunc("/cache", cacheHandler)
	http.HandleFunc("/pool", poolHandler)
	http.HandleFunc("/garbage", garbageHandler)
	http.HandleFunc("/work", workHandler)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("ready %s\n", ln.Addr())
	panic(http.Serve(ln, nil))
}
