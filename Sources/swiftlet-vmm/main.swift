import VMMCommand

SwiftletVMMCommand.main()
