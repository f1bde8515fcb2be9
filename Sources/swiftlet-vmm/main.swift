import VMMCommand

SwiftletVMMMain.main()
