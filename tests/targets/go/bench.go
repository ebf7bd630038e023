// Benchmark load for Go: N operations, then prints the ns per operation.
//
//	bench N alloc       new 64-byte objects (heap sampling on, at Go's default rate)
//	bench N goroutines  start a goroutine and wait for it to end
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

var sink *[64]byte

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	// Services usually have sampling on (net/http/pprof references it); a
	// binary that never asks for profiles starts with it off.
	runtime.MemProfileRate = 512 * 1024
	start := time.Now()
	switch os.Args[2] {
	case "alloc":
		for i := 0; i < n; i++ {
			sink = new([64]byte)
		}
	case "goroutines":
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() { wg.Done() }()
			wg.Wait()
		}
	}
	fmt.Printf("ns_per_pair %.1f\n", float64(time.Since(start).Nanoseconds())/float64(n))
}
