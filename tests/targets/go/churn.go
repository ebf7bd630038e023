// A goroutine-heavy service for measuring leaktrace's own cost: PARKED
// goroutines blocked for good, then batches of 100 short-lived goroutines every
// 5 ms (about 15,000 a second here) for DURATION. Prints "ready" once parked.
//
//	churn PARKED DURATION
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	parked, _ := strconv.Atoi(os.Args[1])
	duration, _ := time.ParseDuration(os.Args[2])
	block := make(chan int)
	for i := 0; i < parked; i++ {
		go func() { <-block }()
	}
	fmt.Println("ready")
	var wg sync.WaitGroup
	for end := time.Now().Add(duration); time.Now().Before(end); {
		for j := 0; j < 100; j++ {
			wg.Add(1)
			go func() { wg.Done() }()
		}
		wg.Wait()
		time.Sleep(5 * time.Millisecond)
	}
}
