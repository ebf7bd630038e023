// Goroutines that lock their OS thread and never return keep one thread
// each: the runtime makes a new M for everything else. Goroutines that lock,
// work and unlock give theirs back.
//
//	threads LOCKED ROUNDS INTERVAL
package main

import (
	"os"
	"runtime"
	"strconv"
	"time"
)

var block = make(chan struct{})

//go:noinline
func lockForever() {
	go func() {
		runtime.LockOSThread()
		<-block
	}()
}

//go:noinline
func lockBriefly(done chan struct{}) {
	go func() {
		runtime.LockOSThread()
		time.Sleep(time.Millisecond)
		runtime.UnlockOSThread()
		done <- struct{}{}
	}()
}

func main() {
	locked, _ := strconv.Atoi(os.Args[1])
	rounds, _ := strconv.Atoi(os.Args[2])
	interval, _ := time.ParseDuration(os.Args[3])
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	for i := 0; i < rounds; i++ {
		if i < locked {
			lockForever()
		}
		lockBriefly(done)
		<-done
		time.Sleep(interval)
	}
}
