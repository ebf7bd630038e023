// Goroutines parked for good: senders on a channel nobody reads and
// sleepers, while main waits to be stopped.
//
//	waiting SENDERS SLEEPERS
package main

import (
	"os"
	"strconv"
	"time"
)

//go:noinline
func send(ch chan int) {
	ch <- 1 // waits: chan send
}

//go:noinline
func nap() {
	time.Sleep(time.Hour) // waits: sleep
}

func main() {
	senders, _ := strconv.Atoi(os.Args[1])
	sleepers, _ := strconv.Atoi(os.Args[2])
	time.Sleep(300 * time.Millisecond)
	ch := make(chan int)
	for i := 0; i < senders; i++ {
		go send(ch)
	}
	for i := 0; i < sleepers; i++ {
		go nap()
	}
	time.Sleep(time.Hour)
}
