// Go leaks as production services have them, beside what is not a leak.
//
//	leaks DIR ROUNDS INTERVAL [LINGER]
//
// Each round (one "request") leaks 1 MiB into a global slice, one goroutine
// blocked forever on an unbuffered channel send and one sleeping for 24 hours;
// it also uses a sync.Pool, a bounded cache, temporary garbage and a fixed
// worker pool. After the rounds it collects garbage, writes its own heap
// profile to DIR/heap.pprof (the runtime's view, to compare with), prints
// "done" and exits after LINGER (default 1.5 s); a LINGER over 3 s also drops
// the last garbage buffer 3 s after "done" and collects it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"time"
)

var (
	records [][]byte // appended per request, never trimmed: the leak
	cache   = map[int][]byte{}
	pool    = sync.Pool{New: func() any { return make([]byte, 256<<10) }}
	sink    []byte
	jobs    = make(chan []byte)
	done    sync.WaitGroup
)

//go:noinline
func appendRecord() {
	records = append(records, make([]byte, 1<<20))
}

//go:noinline
func blockForever() {
	ch := make(chan int)
	go func() { ch <- 1 }() // nobody ever receives
}

//go:noinline
func sleepForever() {
	go func() { time.Sleep(24 * time.Hour) }()
}

//go:noinline
func cachePut(i int) {
	cache[i%8] = make([]byte, 512<<10) // bounded: 8 entries at most
}

//go:noinline
func usePool() {
	b := pool.Get().([]byte)
	b[0]++
	pool.Put(b)
}

//go:noinline
func makeGarbage() {
	sink = make([]byte, 2<<20) // dropped by the next round
}

//go:noinline
func startWorkers(n int) {
	for i := 0; i < n; i++ {
		go func() {
			for job := range jobs {
				job[0]++
				done.Done()
			}
		}()
	}
}

func main() {
	dir := os.Args[1]
	rounds, _ := strconv.Atoi(os.Args[2])
	interval, _ := time.ParseDuration(os.Args[3])
	linger := 1500 * time.Millisecond
	if len(os.Args) > 4 {
		linger, _ = time.ParseDuration(os.Args[4])
	}
	startWorkers(4)
	for i := 0; i < rounds; i++ {
		appendRecord()
		blockForever()
		sleepForever()
		cachePut(i)
		usePool()
		makeGarbage()
		done.Add(1)
		jobs <- make([]byte, 4<<10)
		done.Wait()
		time.Sleep(interval)
	}
	runtime.GC()
	f, err := os.Create(filepath.Join(dir, "heap.pprof"))
	if err != nil {
		panic(err)
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		panic(err)
	}
	f.Close()
	fmt.Println("done", len(records))
	if linger > 3*time.Second {
		time.Sleep(3 * time.Second)
		sink = nil
		runtime.GC()
		linger -= 3 * time.Second
	}
	time.Sleep(linger)
}
