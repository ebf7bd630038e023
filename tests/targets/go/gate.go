// What goleak checks at the end of a test, for leaktrace --fail-on:
//
//	gate leak    leaves 3 goroutines blocked on a channel send and a file
//	             open, then exits
//	gate clean   starts the same goroutines and lets them finish, closes the
//	             file, then exits
package main

import (
	"os"
	"path/filepath"
	"sync"
)

func blockForever(out chan<- int) {
	out <- 1 // nobody receives
}

func finish(out chan<- int, wg *sync.WaitGroup) {
	defer wg.Done()
	out <- 1
}

func main() {
	leak := len(os.Args) > 1 && os.Args[1] == "leak"
	f, err := os.Create(filepath.Join(os.TempDir(), "leaktrace-gate"))
	if err != nil {
		panic(err)
	}
	if leak {
		stuck := make(chan int)
		for i := 0; i < 3; i++ {
			go blockForever(stuck)
		}
		return
	}
	done := make(chan int, 3)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go finish(done, &wg)
	}
	wg.Wait()
	f.Close()
}
